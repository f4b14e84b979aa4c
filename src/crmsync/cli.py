"""crmsync: keep SQL tables and Microsoft Dynamics 365 in sync.

Try everything offline with `crmsync demo`.

For real: `crmsync db upgrade`, then `crmsync run`.

See what waits with `crmsync status`, what failed with `crmsync errors list`.

Settings come from CRMSYNC_* environment variables (see the README).
"""

from __future__ import annotations

import csv
import enum
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import Engine, make_url

from crmsync import logs
from crmsync.cli_objects import NAMED, check_object, command
from crmsync.config import Settings, load_settings
from crmsync.errors import ConfigError, CrmsyncError, ValidationFailed
from crmsync.mapping import activate as activate_mapping
from crmsync.memory import limit_arenas
from crmsync.store.history import configure as configure_history

# Who retried or dismissed, as the records' history says (``store.history``).
CLI_ACTOR = "cli"

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
MAX_SHOWN_ERRORS = 200
# Set by main(): this process is the command, so it owns logging (see logs.configure).
STANDALONE = "standalone"
# Exit status 2 says "a person must fix something": the systemd units do not restart on
# it. A long-running command that loses its store to an outage exits 1 instead.
_LONG_RUNNING: list[str] = []

log = logging.getLogger(__name__)

db_app = typer.Typer(no_args_is_help=True, help="Manage the store's schema.")
app.add_typer(db_app, name="db")
mapping_app = typer.Typer(no_args_is_help=True, help="Check the mapping of objects and fields.")
app.add_typer(mapping_app, name="mapping")


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


@app.callback()
def _options(
    ctx: typer.Context,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            help="Logs on stderr as text lines, or one JSON object a line (for shippers)",
        ),
    ] = LogFormat.TEXT,
) -> None:
    if ctx.obj == STANDALONE:
        logs.configure("json" if log_format is LogFormat.JSON else "text")


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        typer.echo(f"crmsync: {exc}", err=True)
        raise typer.Exit(2) from None
    # The command runs with the configured mapping (objects known only by name, a queue
    # entry's or a log row's, are looked up in it).
    activate_mapping(settings.object_specs())
    configure_history(enabled=settings.history, retention_days=settings.history_retention_days)
    secrets = [
        s.get_secret_value()
        for s in (
            settings.client_secret,
            settings.api_token,
            settings.admin_password,
            settings.alert_webhook_url,
        )
        if s is not None
    ]
    password = make_url(settings.database_url).password
    logs.add_secrets([*secrets, *([str(password)] if password else [])])
    return settings


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
    # Every object of the mapping (CRMSYNC_CONFIG), custom tables and columns included.
    specs = _settings().object_specs().values()
    serve(host=host, port=port, db=db, certfile=certfile, keyfile=keyfile, specs=specs)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the store's schema and install the capture triggers."""
    from crmsync.store.db import open_store
    from crmsync.store.migrate import current_revision, upgrade

    settings = _settings()
    engine = open_store(settings.database_url, existing=False)
    try:
        before = current_revision(engine)
        captured = upgrade(engine, settings.object_specs().values(), announce=typer.echo)
        after = current_revision(engine)
    finally:
        engine.dispose()
    moved = f"from {before} to {after}" if before != after else f"at {after}, nothing to do"
    typer.echo(f"schema {moved}; capturing changes on: {', '.join(captured) or 'nothing'}")


@mapping_app.command("check")
def mapping_check(
    as_json: Annotated[bool, typer.Option("--json", help="Print the mismatches as JSON")] = False,
    timeout: Annotated[
        float, typer.Option(min=1, max=3600, help="Seconds to wait for Dynamics")
    ] = 120,
) -> None:
    """Compare the mapping with the Dynamics environment's metadata; exit 1 on any mismatch."""
    import asyncio
    import json

    from crmsync.dynamics.client import DataverseClient
    from crmsync.dynamics.metadata import read_tables
    from crmsync.mapping.check import mismatches

    settings = _settings()
    if not settings.dynamics_url:
        raise ConfigError("CRMSYNC_DYNAMICS_URL: needed to read the environment's metadata")
    specs = settings.object_specs()

    async def read() -> list[Any]:
        async with DataverseClient.from_settings(settings) as client:
            tables = await read_tables(client, (s.logical_name for s in specs.values()))
        return mismatches(specs, tables)

    try:
        found = asyncio.run(asyncio.wait_for(read(), timeout))
    except TimeoutError:
        raise ConfigError(
            f"Dynamics did not answer within {timeout:g} s ({settings.dynamics_url})"
        ) from None
    if as_json:
        typer.echo(json.dumps({"mismatches": [m.as_json() for m in found]}, indent=2))
    else:
        for m in found:
            where = f"{m.object}.{m.field}" if m.field else m.object
            typer.echo(f"{where}: {m.kind}: {m.message}")
        checked = ", ".join(specs)
        typer.echo(
            f"{len(found)} mismatch(es) between the mapping and Dynamics"
            if found
            else f"the mapping matches Dynamics ({checked})"
        )
    if found:
        raise typer.Exit(1)


def _warn_about_access(settings: Settings) -> None:
    """Say who will be able to get in, when it is not everyone it could be."""
    if settings.admin_password is None and settings.api_token is None:
        typer.echo(
            "crmsync: neither CRMSYNC_ADMIN_PASSWORD nor CRMSYNC_API_TOKEN is set: "
            "nobody can log in to the console and /api/v1 will answer 401",
            err=True,
        )
    elif settings.admin_password is None:
        typer.echo(
            "crmsync: CRMSYNC_ADMIN_PASSWORD is not set: the console has no login "
            "(the API takes CRMSYNC_API_TOKEN)",
            err=True,
        )
    elif settings.api_token is None:
        typer.echo(
            "crmsync: CRMSYNC_API_TOKEN is not set: /api/v1 accepts console sessions only",
            err=True,
        )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on")] = 8000,
) -> None:
    """Run the console and the JSON API."""
    import uvicorn

    from crmsync.store.db import open_store
    from crmsync.store.migrate import refuse_unapplied_mapping
    from crmsync.web.app import create_app
    from crmsync.web.server import server_options

    settings = _settings()
    _warn_about_access(settings)
    _LONG_RUNNING.append("serve")
    # A store that is down is /healthz's to report (503), not a reason not to start.
    engine = open_store(settings.database_url, reachable=False)
    try:
        # A mapping changed without `crmsync db upgrade` is one line, as for a worker.
        refuse_unapplied_mapping(engine, settings.object_specs().values())
        config = uvicorn.Config(
            create_app(settings, engine=engine),
            host=host,
            port=port,
            # uvicorn logs through crmsync's logging (logs.configure).
            log_config=None,
            **server_options(settings),
        )
        uvicorn.Server(config).run()
    finally:
        engine.dispose()


@app.command("import")
def import_(
    object: Annotated[str, typer.Argument(help=f"A mapped object: {NAMED}")],
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
    from crmsync.store.db import open_store
    from crmsync.store.sync_errors import escape_cell

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
    header = shape.header

    def report(error: RowError) -> None:
        nonlocal shown
        if shown < MAX_SHOWN_ERRORS:
            stderr.print(str(error), markup=False)
        shown += 1
        if writer is not None:
            # The rows are for a spreadsheet: escaped as the errors export is.
            cells = [error.field or "", error.message, *(error.values.get(c, "") for c in header)]
            writer.writerow([error.line, *map(escape_cell, cells)])

    engine = open_store(settings.database_url)
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
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print what would be sent to Dynamics for each waiting change; send nothing",
        ),
    ] = False,
    limit: Annotated[
        int, typer.Option(min=1, max=100_000, help="With --dry-run: changes shown per object")
    ] = 100,
) -> None:
    """Run the sync workers."""
    from crmsync.engine.worker import run_worker
    from crmsync.store.db import open_store

    settings = _settings()
    if dry_run:
        import asyncio

        from crmsync.engine.choices import settings_with_options
        from crmsync.engine.dry_run import plan_waiting
        from crmsync.engine.plan import describe

        # A choice whose labels Dynamics gives is planned with the options it has now.
        settings = asyncio.run(settings_with_options(settings))
        with _store(settings) as engine:
            steps = plan_waiting(engine, settings, limit)
        for step in steps:
            typer.echo(describe(step))
        typer.echo(f"{len(steps)} waiting change(s) planned; nothing was sent")
        return
    # A store that is not there or not upgraded is one line; one that is down is the
    # worker's to wait for.
    open_store(settings.database_url, reachable=False).dispose()
    _LONG_RUNNING.append("worker")
    with _load_progress() as progress:
        run_worker(settings, once=once, concurrency=concurrency, progress=progress)


@contextmanager
def _load_progress() -> Iterator[Any]:
    """A progress bar per object on stderr while an initial load (a full read) runs.

    Dynamics does not say how many rows a change-tracking read will return, so each bar
    counts rows read and their rate rather than a percentage.
    """
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("initial load of {task.description}: {task.completed:,.0f} rows"),
        TimeElapsedColumn(),
    )
    bars = Progress(*columns, console=Console(stderr=True), transient=False)
    tasks: dict[str, Any] = {}

    def advance(obj: str, rows: int) -> None:
        if obj not in tasks:
            tasks[obj] = bars.add_task(obj, total=None)
        bars.advance(tasks[obj], rows)

    with bars:
        yield advance


errors_app = typer.Typer(
    no_args_is_help=True,
    help="Records that failed to sync: list or export them, retry or dismiss them.",
)
app.add_typer(errors_app, name="errors")

SearchOpt = Annotated[
    str | None,
    typer.Option(
        "--search", help="Only errors whose message, code, email, name or id contains this"
    ),
]
ObjectOpt = Annotated[str | None, typer.Option("--object", help=f"Only this object: {NAMED}")]
DirectionOpt = Annotated[
    str | None,
    typer.Option("--direction", help="to_crm (sending to Dynamics) or from_crm (receiving)"),
]
OperationOpt = Annotated[
    str | None, typer.Option("--operation", help="Only insert, update or delete errors")
]
CodeOpt = Annotated[
    str | None, typer.Option("--code", help="Only this error code, e.g. 0x80040333")
]
StatusOpt = Annotated[
    str | None,
    typer.Option("--status", help="open (the default), resolved, dismissed or all"),
]
SinceOpt = Annotated[
    str | None,
    typer.Option("--since", help="Failed last at or after this time, e.g. 2026-11-25T14:00Z"),
]
UntilOpt = Annotated[
    str | None, typer.Option("--until", help="Failed last before this time, e.g. 2026-11-26T00:00Z")
]


CategoryOpt = Annotated[
    str | None,
    typer.Option(
        "--category",
        help="Kind of failure: data_too_long, invalid_value, duplicate, missing_reference,"
        " permission, mapping, throttled, unavailable or other",
    ),
]
FieldOpt = Annotated[
    str | None, typer.Option("--field", help="The local column the failure concerns, exactly")
]


def _raw_filters(
    search: str | None,
    object: str | None,
    direction: str | None,
    operation: str | None,
    code: str | None,
    status: str | None,
    since: str | None,
    until: str | None,
    category: str | None = None,
    field: str | None = None,
) -> dict[str, str | None]:
    """The filter options by the names ``sync_errors.make_filters`` takes (as the API's)."""
    return {
        "q": search,
        "object": object,
        "direction": direction,
        "operation": operation,
        "code": code,
        "status": status,
        "since": since,
        "until": until,
        "category": category,
        "field": field,
    }


@contextmanager
def _store(settings: Settings, object: str | None = None) -> Iterator[Engine]:
    """The store, opened once ``object`` (if given) is known to be mapped."""
    from crmsync.store.db import open_store
    from crmsync.store.records import NotFound

    try:
        check_object(object, settings.object_specs())
    except ValidationFailed as exc:
        typer.echo(f"crmsync: --object: {exc.message}", err=True)
        raise typer.Exit(2) from None
    engine = open_store(settings.database_url)
    try:
        yield engine
    except ValidationFailed as exc:
        option = {"q": "search", "ids": "id"}.get(exc.field, exc.field).replace("_", "-")
        typer.echo(f"crmsync: --{option}: {exc.message}", err=True)
        raise typer.Exit(2) from None
    except NotFound as exc:
        typer.echo(f"crmsync: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


def _print_json(body: object) -> None:
    typer.echo(json.dumps(body, indent=2, ensure_ascii=False))


@app.command(
    # Paragraphs as one string each: the help keeps a docstring's line breaks.
    help="What waits to sync per object and how long it will take, or what synced lately."
    "\n\nThe backlog view counts waiting changes in both directions; --view last-hour"
    " counts the records synced in the last complete clock hour. With --object, one"
    " object's numbers per operation and direction.",
)
def status(
    view: Annotated[
        str,
        typer.Option(help="backlog: what waits to sync; last-hour: what synced in the last hour"),
    ] = "backlog",
    object: Annotated[
        str | None,
        typer.Option(help=f"One object's waiting changes, with the oldest of each: {NAMED}"),
    ] = None,
    at: Annotated[
        str | None, typer.Option(help="Look from this time instead of now, e.g. 2026-11-25T14:00Z")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (as the API answers) instead of a table")
    ] = False,
) -> None:
    """Print the Sync Status table (the help text is the decorator's)."""
    from crmsync import terminal
    from crmsync.store import status as queries
    from crmsync.store.db import read_transaction
    from crmsync.store.params import check_choice, parse_timestamp

    settings = _settings()
    with _store(settings, object) as engine:
        when = parse_timestamp("at", at)
        check_choice("view", view, ("backlog", "last-hour", "last_hour"))
        with read_transaction(engine) as conn:
            if object is not None and view == "backlog":
                body = queries.details(conn, object, at=when)
            elif object is not None:
                body = queries.last_hour_details(conn, object, settings.zone, at=when)
            elif view == "backlog":
                body = queries.backlog(conn, settings.object_specs(), at=when)
            else:
                body = queries.last_hour(conn, settings.object_specs(), settings.zone, at=when)
    if as_json:
        _print_json(body)
    else:
        terminal.print_status(body)


def _filters(settings: Settings, given: dict[str, str | None]) -> Any:
    from crmsync.store.sync_errors import make_filters

    return make_filters(settings.object_specs(), **given)


@errors_app.command("list")
def errors_list(
    search: SearchOpt = None,
    object: ObjectOpt = None,
    direction: DirectionOpt = None,
    operation: OperationOpt = None,
    code: CodeOpt = None,
    status: StatusOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    category: CategoryOpt = None,
    field: FieldOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many errors to show")] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (as the API answers) instead of a table")
    ] = False,
) -> None:
    """List the records that failed to sync, newest first, with what went wrong."""
    from crmsync import terminal
    from crmsync.store import sync_errors

    settings = _settings()
    with _store(settings, object) as engine, engine.connect() as conn:
        given = _raw_filters(
            search, object, direction, operation, code, status, since, until, category, field
        )
        page = sync_errors.list_errors(conn, _filters(settings, given), limit=limit)
    if as_json:
        _print_json(page)
    else:
        terminal.print_errors(page)


@errors_app.command("export")
def errors_export(
    file: Annotated[Path, typer.Argument(help="File to write")],
    format: Annotated[str, typer.Option(help="csv or json")] = "csv",
    search: SearchOpt = None,
    object: ObjectOpt = None,
    direction: DirectionOpt = None,
    operation: OperationOpt = None,
    code: CodeOpt = None,
    status: StatusOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    category: CategoryOpt = None,
    field: FieldOpt = None,
) -> None:
    """Save the matching errors to FILE, as CSV (for a spreadsheet) or JSON."""
    from crmsync.store import sync_errors
    from crmsync.store.params import check_choice

    settings = _settings()
    with _store(settings, object) as engine:
        check_choice("format", format, ("csv", "json"))
        given = _raw_filters(
            search, object, direction, operation, code, status, since, until, category, field
        )
        filters = _filters(settings, given)
        try:
            with file.open("w", encoding="utf-8", newline="") as out:
                for chunk in sync_errors.export(engine, filters, format):
                    out.write(chunk)
        except OSError as exc:
            typer.echo(f"crmsync: cannot write {file}: {exc.strerror}", err=True)
            raise typer.Exit(2) from None
    typer.echo(f"wrote {file}")


IdOpt = Annotated[
    list[int] | None, typer.Option("--id", help="The error's id, from `errors list` (repeatable)")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every error the filters match")]


def _selection(id: list[int] | None, all_: bool, given: dict[str, str | None]) -> None:
    """``--id`` or ``--all``, and filters only with ``--all`` (exit 2 otherwise)."""
    if bool(id) == all_:
        typer.echo("crmsync: give --id N (repeatable) or --all", err=True)
        raise typer.Exit(2)
    if id and any(v is not None for v in given.values()):
        typer.echo("crmsync: --id does not take filters; use --all with filters", err=True)
        raise typer.Exit(2)


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


@errors_app.command("retry")
def errors_retry(
    id: IdOpt = None,
    all_: AllOpt = False,
    search: SearchOpt = None,
    object: ObjectOpt = None,
    direction: DirectionOpt = None,
    operation: OperationOpt = None,
    code: CodeOpt = None,
    status: StatusOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    category: CategoryOpt = None,
    field: FieldOpt = None,
) -> None:
    """Send failed records again, once their cause is fixed.

    Each error stays open until its record syncs, then it is resolved.
    """
    from crmsync.store import sync_errors
    from crmsync.store.db import write_transaction

    given = _raw_filters(
        search, object, direction, operation, code, status, since, until, category, field
    )
    _selection(id, all_, given)
    settings = _settings()
    with _store(settings, object) as engine, write_transaction(engine) as conn:
        result = sync_errors.retry(
            conn, settings.object_specs(), ids=id or None, given=given, actor=CLI_ACTOR
        )
    typer.echo(
        f"Retried {_plural(result['errors'], 'error')}:"
        f" {_plural(result['requeued'], 'record')} queued to sync again."
    )


@errors_app.command(
    "dismiss",
    # Paragraphs as one string each: the help keeps a docstring's line breaks.
    help="Hide errors you will not fix from the open list.\n\n"
    "`crmsync errors list --status dismissed` still shows them. With --all, only open"
    " errors are dismissed (resolved ones stay resolved).",
)
def errors_dismiss(
    id: IdOpt = None,
    all_: AllOpt = False,
    search: SearchOpt = None,
    object: ObjectOpt = None,
    direction: DirectionOpt = None,
    operation: OperationOpt = None,
    code: CodeOpt = None,
    status: StatusOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    category: CategoryOpt = None,
    field: FieldOpt = None,
) -> None:
    """Mark the matching errors dismissed (the help text is the decorator's)."""
    from crmsync.store import sync_errors
    from crmsync.store.db import write_transaction

    given = _raw_filters(
        search, object, direction, operation, code, status, since, until, category, field
    )
    _selection(id, all_, given)
    settings = _settings()
    with _store(settings, object) as engine, write_transaction(engine) as conn:
        result = sync_errors.dismiss_selected(
            conn, settings.object_specs(), ids=id or None, given=given, actor=CLI_ACTOR
        )
    typer.echo(f"Dismissed {_plural(result['dismissed'], 'error')}.")


@app.command()
def run(
    host: Annotated[str, typer.Option(help="Address the console listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Console port (0: any free)")] = 8000,
    concurrency: Annotated[
        int, typer.Option(min=1, max=32, help="Batches in flight at once in this process")
    ] = 4,
) -> None:
    """Run the console and API (serve) and the sync workers (worker) in one process."""
    from crmsync.demo.product import run_product
    from crmsync.store.db import open_store

    settings = _settings()
    _warn_about_access(settings)
    open_store(settings.database_url, reachable=False).dispose()
    _LONG_RUNNING.append("run")
    run_product(settings, host=host, port=port, concurrency=concurrency)


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="Address the console listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Console port (0: any free)")] = 8000,
    emulator_port: Annotated[
        int, typer.Option(min=0, max=65535, help="Emulator port on 127.0.0.1 (0: any free)")
    ] = 0,
    data_dir: Annotated[
        Path, typer.Option(help="Folder for the demo's store, emulator records and login")
    ] = Path(".crmsync-demo"),
    reset: Annotated[
        bool | None,
        typer.Option(
            "--reset/--reuse",
            help="Start afresh, or carry on with the earlier run's data "
            "(default: ask on a terminal, otherwise reuse)",
        ),
    ] = None,
    rate: Annotated[
        float, typer.Option(min=0.1, max=1000, help="Changes a second made by the generator")
    ] = 5.0,
) -> None:
    """Run the whole product offline: emulator, store, workers, console and traffic."""
    from crmsync.demo.runner import DemoOptions, run_demo

    run_demo(
        DemoOptions(
            host=host,
            port=port,
            emulator_port=emulator_port,
            data_dir=data_dir,
            reset=reset,
            rate=rate,
        )
    )


def main() -> None:
    """The command's entry point: every failure it expects is one line and status 2."""
    from sqlalchemy.exc import DBAPIError

    from crmsync.store.db import not_upgraded, store_error_message

    limit_arenas()
    try:
        # The help names the objects of the mapping in force.
        command(app)(obj=STANDALONE)
    except CrmsyncError as exc:
        typer.echo(f"crmsync: {exc}", err=True)
        sys.exit(2)
    except DBAPIError as exc:
        url = os.environ.get("CRMSYNC_DATABASE_URL", "sqlite:///crmsync.db")
        typer.echo(f"crmsync: {store_error_message(url, exc)}", err=True)
        sys.exit(1 if _LONG_RUNNING and not not_upgraded(exc) else 2)
    except KeyboardInterrupt:
        typer.echo("crmsync: interrupted", err=True)
        sys.exit(130)


# The resync, audit and jobs commands live beside this module; importing it registers them.
from crmsync import cli_jobs as cli_jobs  # noqa: E402
