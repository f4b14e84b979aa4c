"""The ``crmsync`` command: thin wrappers over library functions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from crmsync.config import Settings, load_settings
from crmsync.errors import ConfigError, CrmsyncError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
db_app = typer.Typer(no_args_is_help=True, help="Manage the store's schema.")
app.add_typer(db_app, name="db")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        typer.echo(f"crmsync: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def emulator(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on")] = 8001,
    db: Annotated[
        Path | None, typer.Option(help="SQLite file to persist records in (default: memory)")
    ] = None,
    certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM) for HTTPS")] = None,
    keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM) for HTTPS")] = None,
) -> None:
    """Run the Dynamics 365 (Dataverse Web API) emulator."""
    from crmsync.emulator.server import serve

    if (certfile is None) != (keyfile is None):
        typer.echo("crmsync: --certfile and --keyfile go together", err=True)
        raise typer.Exit(2)
    for path in (certfile, keyfile):
        if path is not None and not path.is_file():
            typer.echo(f"crmsync: no such file: {path}", err=True)
            raise typer.Exit(2)
    serve(host=host, port=port, db=db, certfile=certfile, keyfile=keyfile)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the store's schema and install the capture triggers."""
    from crmsync.store.db import create_store_engine
    from crmsync.store.migrate import current_revision, upgrade

    settings = _settings()
    engine = create_store_engine(settings.database_url)
    try:
        before = current_revision(engine)
        captured = upgrade(engine, settings.object_specs().values())
        after = current_revision(engine)
    finally:
        engine.dispose()
    moved = f"from {before} to {after}" if before != after else f"at {after}, nothing to do"
    typer.echo(f"schema {moved}; capturing changes on: {', '.join(captured) or 'nothing'}")


def main() -> None:
    try:
        app()
    except CrmsyncError as exc:
        typer.echo(f"crmsync: {exc}", err=True)
        sys.exit(2)
