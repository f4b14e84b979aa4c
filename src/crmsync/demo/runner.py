"""``crmsync demo``: the emulator, the store, the workers, the console and the generator.

All in one process and one event loop: two uvicorn servers (the Dataverse emulator on
its own port, the console and API on the one asked for), the sync worker, the traffic
generator and a one-line progress report. The store is a SQLite file in the data
folder, the emulator keeps its records in another, so a second run can carry on.

The mapping is the demo's own (``mapping.toml`` beside this module: a custom field on
lead and a custom table), laid over the default like any user's, unless the file named
by ``CRMSYNC_CONFIG`` has ``[objects]`` tables: then that mapping is used instead. The
emulator serves the mapping in force, whichever it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tomllib
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import sqlalchemy as sa

from crmsync.config import Settings, load_settings
from crmsync.demo import history
from crmsync.demo.datadir import Choice, Credentials, DataDir, decide
from crmsync.demo.generator import CrmUser, Traffic, TrafficConfig
from crmsync.demo.product import add_console, add_worker
from crmsync.demo.services import Group, Task, bind, port_of
from crmsync.domain import ErrorStatus
from crmsync.dynamics.client import DataverseClient
from crmsync.engine.worker import Worker
from crmsync.store.db import create_store_engine, write_transaction
from crmsync.store.migrate import upgrade
from crmsync.store.schema import sync_backlog_count, sync_error, sync_throughput
from crmsync.store.types import utcnow

TENANT = "demo"
SYNC_CLIENT = "crmsync-demo"
CRM_USER = "demo-sales-team"
REPORT_SECONDS = 30.0
DEMO_MAPPING = Path(__file__).with_name("mapping.toml")

# Dataverse-like behaviour: its real service-protection limits (6,000 requests per
# 300 s and 52 concurrent per user, api-limits.md), latency of a cloud round trip plus
# per-record work, duplicate detection rules published, and the odd 429 and 503, so
# that retries show up as they would against a real environment.
EMULATOR_SETTINGS: dict[str, Any] = {
    "latency_ms": 60,
    "per_record_ms": 25,
    "max_requests": 6000,
    "window_s": 300,
    "max_concurrency": 52,
    "throttle_rate": 0.01,
    "fail_rate": 0.003,
    "retry_after_s": 2,
    "duplicate_detection": True,
}


@dataclass
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    emulator_port: int = 0  # 0: any free port
    data_dir: Path = Path(".crmsync-demo")
    reset: bool | None = None  # True --reset, False --reuse, None ask (or reuse)
    rate: float = 5.0
    workers: int = 2


def demo_mapping() -> dict[str, Any]:
    """The ``objects`` tables of the demo's mapping file."""
    objects: dict[str, Any] = tomllib.loads(DEMO_MAPPING.read_text("utf-8"))["objects"]
    return objects


def user_maps_objects() -> bool:
    """Whether the file named by ``CRMSYNC_CONFIG`` has ``[objects]`` tables of its own
    (a file that cannot be read is ``load_settings``'s to report)."""
    path = os.environ.get("CRMSYNC_CONFIG")
    if not path:
        return False
    try:
        data = tomllib.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return bool(data.get("objects"))


def demo_settings(data: DataDir, creds: Credentials, emulator_url: str) -> Settings:
    """The product's settings for the demo; the environment still sets the rest
    (``CRMSYNC_TIMEZONE``, batch size...). Passwords from the environment win; the
    demo's mapping is used unless ``CRMSYNC_CONFIG`` maps objects itself."""
    mapping = {} if user_maps_objects() else {"objects": demo_mapping()}
    return load_settings(
        **mapping,
        database_url=data.database_url,
        dynamics_url=emulator_url,
        authority_url=emulator_url,
        tenant_id=TENANT,
        client_id=SYNC_CLIENT,
        client_secret=creds.client_secret,
        api_token=os.environ.get("CRMSYNC_API_TOKEN") or creds.api_token,
        admin_password=os.environ.get("CRMSYNC_ADMIN_PASSWORD") or creds.admin_password,
        retry_max_seconds=30,
    )


def banner(
    settings: Settings, console: str, emulator: str, data: DataDir, choice: Choice, rate: float
) -> str:
    password = settings.admin_password.get_secret_value() if settings.admin_password else ""
    token = settings.api_token.get_secret_value() if settings.api_token else ""
    what = {Choice.NEW: "new", Choice.REUSE: "reused", Choice.RESET: "reset"}[choice]
    mapped = settings.object_specs()
    custom = [name for name, spec in mapped.items() if not spec.standard]
    demo_mapped = bool(settings.objects) and settings.objects == demo_mapping()
    mapping = f"{DEMO_MAPPING} (the demo's)" if demo_mapped else "CRMSYNC_CONFIG's"
    cli = [f"  export CRMSYNC_DATABASE_URL={data.database_url}"]
    if demo_mapped:
        cli.append(f"  export CRMSYNC_CONFIG={DEMO_MAPPING}")
    return "\n".join(
        [
            f"crmsync demo is running (data in {data.path}, {what})",
            "",
            f"  Console    {console}/admin/microsoft-dynamics/sync-status",
            f"  Login      user admin, password {password}",
            f"  API token  {token}",
            f"  Try        curl -H 'Authorization: Bearer {token}' {console}/api/v1/sync/status",
            f"  Metrics    {console}/metrics (same token)",
            f"  API docs   {console}/api/v1/docs",
            f"  Dynamics   {emulator}/api/data/v9.2/ (the emulator)",
            f"  Mapping    {mapping}: custom objects {', '.join(custom) or 'none'}",
            "",
            "For the CLI (crmsync status, crmsync errors list) in another terminal:",
            *cli,
            "",
            f"Generating about {rate:g} changes a second, with a list import now and then;",
            "the emulator throttles about 1% of requests on purpose, as Dataverse may.",
            "Press Ctrl-C to stop.",
            "",
        ]
    )


def progress(engine: sa.Engine) -> dict[str, int]:
    """Backlog, open errors and records synced so far (history included)."""
    with engine.connect() as conn:
        # The backlog's counts (store/backlog_counts.py), not a count of the queue.
        backlog = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(sync_backlog_count.c.n), 0))
        ).scalar()
        errors = conn.execute(
            sa.select(sa.func.count())
            .select_from(sync_error)
            .where(sync_error.c.status == ErrorStatus.OPEN)
        ).scalar()
        synced = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(sync_throughput.c.synced), 0))
        ).scalar()
    return {"backlog": int(backlog or 0), "errors": int(errors or 0), "synced": int(synced or 0)}


async def _report(engine: sa.Engine, out: TextIO, stopping: asyncio.Event) -> None:
    baseline = (await asyncio.to_thread(progress, engine))["synced"]
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=REPORT_SECONDS)
        if stopping.is_set():
            return
        try:
            p = await asyncio.to_thread(progress, engine)
        except sa.exc.SQLAlchemyError:
            continue
        print(
            f"backlog {p['backlog']}, synced since start {p['synced'] - baseline}, "
            f"open errors {p['errors']}",
            file=out,
            flush=True,
        )


async def _run(
    options: DemoOptions, out: TextIO, ask: Callable[[], str], interactive: bool
) -> None:
    from crmsync.emulator.app import Emulator
    from crmsync.emulator.server import config as emulator_config

    # Ports first: a port in use must fail before any data is reset.
    console_sock = bind(options.host, options.port, "console")
    emulator_sock = bind("127.0.0.1", options.emulator_port, "emulator")
    data = DataDir(options.data_dir)
    choice = decide(data.has_data(), options.reset, interactive, ask)
    data.prepare()
    if choice is Choice.RESET:
        data.reset()
    creds = data.credentials()

    group = Group()
    emulator_url = f"http://127.0.0.1:{port_of(emulator_sock)}"
    settings = demo_settings(data, creds, emulator_url)
    emu_config = emulator_config(
        "127.0.0.1",
        port_of(emulator_sock),
        data.emulator,
        specs=settings.object_specs().values(),
    )
    emulator = emu_config.app
    assert isinstance(emulator, Emulator)
    emulator.configure(
        {
            **EMULATOR_SETTINGS,
            "clients": {SYNC_CLIENT: creds.client_secret, CRM_USER: creds.crm_user_secret},
        }
    )
    group.add_server(emu_config, emulator_sock)

    engine = create_store_engine(settings.database_url)
    traffic_engine = create_store_engine(settings.database_url)  # another program's connection
    try:
        await asyncio.to_thread(_prepare_store, engine, settings)
        console = add_console(group, settings, engine, console_sock)
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(DataverseClient.from_settings(settings))
            api_http = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=console,
                    headers={"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}
                    if settings.api_token
                    else {},
                    timeout=30,
                )
            )
            crm_http = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
            crm = CrmUser(emulator_url, TENANT, CRM_USER, creds.crm_user_secret, crm_http)
            traffic = Traffic(
                traffic_engine,
                api_http,
                crm,
                TrafficConfig(rate=options.rate),
                specs=settings.object_specs(),
            )
            add_worker(group, Worker(engine, client, settings, concurrency=options.workers))
            group.add_task(Task("generator", traffic.run, traffic.stop))
            reporting = asyncio.Event()
            group.add_task(Task("report", lambda: _report(engine, out, reporting), reporting.set))

            async def announce() -> None:
                text = banner(settings, console, emulator_url, data, choice, options.rate)
                print(text, file=out, flush=True)

            await group.run(after_start=announce)
        print("crmsync demo stopped.", file=out, flush=True)
    finally:
        engine.dispose()
        traffic_engine.dispose()


def _prepare_store(engine: sa.Engine, settings: Settings) -> None:
    upgrade(engine, settings.object_specs().values())
    with write_transaction(engine) as conn:
        history.seed_history(conn, utcnow(), settings.zone, settings.object_specs().values())


def quiet_logging() -> None:
    """Warnings and errors only, and not the throttling the demo injects on purpose."""
    import logging

    # The command's logging (logs.configure) when run as ``crmsync demo``; a plain one
    # for an in-process caller that has none.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("crmsync").setLevel(logging.WARNING)
    logging.getLogger("crmsync.dynamics").setLevel(logging.ERROR)


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> None:
    """Run until SIGINT/SIGTERM."""
    quiet_logging()
    interactive = sys.stdin.isatty() and out.isatty()

    def ask() -> str:
        print(
            f"Demo data from an earlier run is in {options.data_dir}. "
            "Reuse it, or reset it? [R]euse / re[s]et: ",
            end="",
            file=out,
            flush=True,
        )
        return sys.stdin.readline()

    asyncio.run(_run(options, out, ask, interactive))
