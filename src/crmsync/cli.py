"""The ``crmsync`` command: thin wrappers over library functions."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Annotated

import typer

from crmsync.config import Settings, load_settings
from crmsync.errors import ConfigError, CrmsyncError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
MAX_SHOWN_ERRORS = 200

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


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on")] = 8000,
) -> None:
    """Run the console and the JSON API."""
    import uvicorn

    from crmsync.web.app import create_app

    settings = _settings()
    if settings.api_token is None:
        typer.echo("crmsync: CRMSYNC_API_TOKEN is not set: /api/v1 will answer 401", err=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@app.command("import")
def import_(
    object: Annotated[str, typer.Argument(help="lead, contact, account or opportunity")],
    file: Annotated[Path, typer.Argument(help="CSV file with a header row of column names")],
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Rows inserted per transaction")
    ] = 500,
    errors_file: Annotated[
        Path | None, typer.Option(help="Write the rejected rows, with line and reason, here")
    ] = None,
) -> None:
    """Import records from a CSV file; bad rows are reported and skipped.

    Exits 0 when every row was imported, 1 when some were rejected, 2 when the file
    could not be imported at all.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from crmsync.store.csv_import import ImportUsageError, RowError, import_csv, inspect_csv
    from crmsync.store.db import create_store_engine

    settings = _settings()
    specs = settings.object_specs()
    spec = specs.get(object)
    if spec is None:
        typer.echo(f"crmsync: unknown object {object!r}; one of {', '.join(specs)}", err=True)
        raise typer.Exit(2)
    stderr = Console(stderr=True, highlight=False, soft_wrap=True)
    shown = 0

    try:
        shape = inspect_csv(file, spec)
    except ImportUsageError as exc:
        typer.echo(f"crmsync: {exc}", err=True)
        raise typer.Exit(2) from None

    errors_out = None
    writer = None
    if errors_file is not None:
        try:
            errors_out = errors_file.open("w", encoding="utf-8", newline="")
        except OSError as exc:
            typer.echo(f"crmsync: cannot write {errors_file}: {exc.strerror}", err=True)
            raise typer.Exit(2) from None
        writer = csv.writer(errors_out)
        writer.writerow(["line", "field", "error", *shape.header])

    def report(error: RowError) -> None:
        nonlocal shown
        if shown < MAX_SHOWN_ERRORS:
            stderr.print(str(error), markup=False)
        shown += 1
        if writer is not None:
            writer.writerow(
                [
                    error.line,
                    error.field or "",
                    error.message,
                    *(error.values.get(c, "") for c in shape.header),
                ]
            )

    engine = create_store_engine(settings.database_url)
    try:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=stderr,
            transient=True,
        ) as progress:
            task = progress.add_task(f"importing {spec.name}", total=shape.rows)
            result = import_csv(
                engine,
                spec,
                file,
                batch_size=batch_size,
                on_progress=lambda n: progress.advance(task, n),
                on_error=report,
            )
    except ImportUsageError as exc:
        typer.echo(f"crmsync: {exc}", err=True)
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
        if errors_out is not None:
            errors_out.close()

    if shown > MAX_SHOWN_ERRORS:
        more = shown - MAX_SHOWN_ERRORS
        hint = f" (all in {errors_file})" if errors_file else " (use --errors-file for all)"
        stderr.print(f"... and {more} more rejected rows{hint}", markup=False)
    typer.echo(
        f"{spec.name}: {result.imported} of {result.rows} rows imported, {result.rejected} rejected"
    )
    if result.rejected:
        raise typer.Exit(1)


@app.command()
def worker(
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Work until the backlog is empty apart from parked errors, then exit 0",
        ),
    ] = False,
    concurrency: Annotated[
        int, typer.Option(min=1, max=32, help="Batches in flight at once in this process")
    ] = 4,
) -> None:
    """Run the sync workers."""
    from crmsync.engine.worker import run_worker

    run_worker(_settings(), once=once, concurrency=concurrency)


@app.command()
def demo() -> None:
    """Run the whole product offline in one process (arrives with the demo issue)."""
    typer.echo(
        "crmsync demo is not built yet: it arrives with the demo issue (emulator, store,\n"
        "workers, console and a traffic generator in one process). Until then, README.md\n"
        "'Try it by hand' runs the emulator, the worker and the records API step by step.",
        err=True,
    )
    raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except CrmsyncError as exc:
        typer.echo(f"crmsync: {exc}", err=True)
        sys.exit(2)
