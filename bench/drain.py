"""Queue drain with no CRM work: crmsync's queue vs PgQueuer, or vs another crmsync tree.

Usage: ``.venv/bin/python bench/drain.py [--entries 200000] [--workers 4] [--rounds 1]``
(needs ``pip install -e '.[bench]'`` for PgQueuer and asyncpg), or
``--history both`` (crmsync with and without its sync history, and PgQueuer,
each round), or ``bench/drain.py --against OTHER/src [--store sqlite|postgresql] [...]``:
this tree's crmsync against the one in ``OTHER/src`` (e.g. a worktree at an earlier commit), each
round timing both in turn (the order alternating), each in a process importing its own
tree, on a fresh database (``--store sqlite``: a file in a temporary directory) migrated
by that tree. Prints the medians and the ratio this / other.

Each round makes a fresh database on ``--pg-url``'s server, then:

- crmsync: fills ``sync_queue`` with ``--entries`` pending ``to_crm`` entries and times
  ``--workers`` processes that each loop ``store.queue.claim`` (batch ``--batch``) and
  ``store.queue.record`` with ``Done`` outcomes until nothing is left;
- PgQueuer: enqueues the same number of jobs in the same database and times
  ``--workers`` processes running ``QueueManager.run(mode=drain)`` with a no-op
  entrypoint (batch ``--batch``).

The two take turns going first (round 1 crmsync, round 2 PgQueuer, ...), so that neither
always runs after the other's dead rows and autovacuum. Prints entries/s of each round
with the load average, then the medians over rounds and their ratio crmsync / PgQueuer.

``queue.claim`` and ``queue.record`` are what the worker runs (``engine/push.py`` claims
with the first and records with ``queue.record_in`` inside its own transaction, which is
``queue.record`` plus the local ids of new records).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


HERE = Path(__file__).resolve().parent.parent / "src"


def make_db(admin_url: str) -> str:
    from crmsync.config import Settings
    from crmsync.store.db import create_store_engine
    from crmsync.store.migrate import upgrade

    name = f"crmsync_bench_{uuid.uuid4().hex[:8]}"
    if admin_url.startswith("sqlite"):
        url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='crmsync-bench-')) / name}.db"
        engine = create_store_engine(url, poolclass=sa.NullPool)
        upgrade(engine, Settings().object_specs().values())
        engine.dispose()
        return url
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = create_store_engine(url, poolclass=sa.NullPool)
    upgrade(engine, Settings().object_specs().values())
    engine.dispose()
    return url


def drop_db(admin_url: str, url: str) -> None:
    name = sa.make_url(url).database
    if admin_url.startswith("sqlite"):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{name}{suffix}").unlink(missing_ok=True)
        return
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def fill_crmsync(url: str, n: int) -> None:
    from crmsync.store.db import create_store_engine
    from crmsync.store.schema import sync_queue
    from crmsync.store.types import utcnow

    engine = create_store_engine(url)
    now = utcnow()
    with engine.begin() as conn:
        for start in range(0, n, 20000):
            conn.execute(
                sa.insert(sync_queue),
                [
                    {
                        "object": "lead",
                        "direction": "to_crm",
                        "record_key": str(i),
                        "operation": "insert",
                        "first_queued_at": now,
                        "last_changed_at": now,
                        "next_attempt_at": now,
                    }
                    for i in range(start, min(n, start + 20000))
                ],
            )
        conn.execute(sa.text("ANALYZE sync_queue"))
    engine.dispose()


def crmsync_worker(url: str, batch: int, history: bool = True) -> None:
    """Claim and record until empty; each outcome carries its sends, as a push's does
    (with ``history``, the ``sent`` and ``synced`` events are written: store/history.py).
    Against a tree from before the history (``--against``), plain outcomes."""
    from crmsync.store import queue
    from crmsync.store.db import create_store_engine

    try:
        from crmsync.store import history as store_history
    except ImportError:
        store_history = None
    else:
        store_history.configure(enabled=history)
    engine = create_store_engine(url)
    wid = f"bench-{uuid.uuid4().hex[:6]}"
    columns = ("email", "first_name", "last_name", "company")
    while True:
        entries = queue.claim(engine, wid, "to_crm", ["lead"], batch, timedelta(seconds=60))
        if not entries:
            break
        done = [queue.Done(e) for e in entries]
        outcome = (
            queue.Outcome(done=done)
            if store_history is None
            else queue.Outcome(
                done=done, sent=[(e, columns) for e in entries], batch=uuid.uuid4().hex[:12]
            )
        )
        queue.record(engine, outcome)
    engine.dispose()


def crmsync_worker_off(url: str, batch: int) -> None:
    crmsync_worker(url, batch, history=False)


def asyncpg_dsn(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def fill_pgqueuer(url: str, n: int) -> None:
    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(asyncpg_dsn(url))
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()
    for start in range(0, n, 20000):
        k = min(n, start + 20000) - start
        await queries.enqueue(["noop"] * k, [None] * k, [0] * k)
    await conn.execute("ANALYZE")
    await conn.close()


async def _pgqueuer_worker(url: str, batch: int) -> None:
    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(asyncpg_dsn(url))
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    await qm.run(batch_size=batch, mode=QueueExecutionMode.drain)
    await conn.close()


def pgqueuer_worker(url: str, batch: int) -> None:
    asyncio.run(_pgqueuer_worker(url, batch))


def timed(target: object, url: str, workers: int, batch: int) -> float:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(url, batch)) for _ in range(workers)]  # type: ignore[arg-type]
    started = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a worker failed with exit code {p.exitcode}")
    return time.monotonic() - started


def one_side(admin_url: str, entries: int, workers: int, batch: int, history: bool) -> None:
    """One timed crmsync drain on a fresh database, as JSON (``--against``'s child)."""
    import crmsync

    url = make_db(admin_url)
    try:
        fill_crmsync(url, entries)
        worker = crmsync_worker if history else crmsync_worker_off
        seconds = timed(worker, url, workers, batch)
    finally:
        drop_db(admin_url, url)
    print(json.dumps({"src": str(Path(crmsync.__file__).parent.parent), "rate": entries / seconds}))


def against(args: argparse.Namespace) -> None:
    other = Path(args.against).resolve()
    if other == HERE:
        raise SystemExit(f"--against {other} is this tree: give another tree's src folder")
    if args.history == "both":
        raise SystemExit("--against takes --history on or off (the same for both trees)")
    admin = "sqlite://" if args.store == "sqlite" else args.pg_url
    rates: dict[Path, list[float]] = {HERE: [], other: []}
    for r in range(args.rounds):
        order = [HERE, other] if r % 2 == 0 else [other, HERE]
        for src in order:
            env = {**os.environ, "PYTHONPATH": str(src)}
            cmd = [sys.executable, __file__, "--one", "--pg-url", admin]
            cmd += ["--entries", str(args.entries), "--workers", str(args.workers)]
            cmd += ["--batch", str(args.batch), "--history", args.history]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise SystemExit(out.stderr)
            found = json.loads(out.stdout.strip().splitlines()[-1])
            if Path(found["src"]).resolve() != src:
                raise SystemExit(f"{src} imported crmsync from {found['src']}")
            rates[src].append(found["rate"])
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"round {r + 1}: this {rates[HERE][-1]:.0f}/s, other {rates[other][-1]:.0f}/s,"
            f" ratio {rates[HERE][-1] / rates[other][-1]:.2f} (load average {load})",
            flush=True,
        )
    a, b = statistics.median(rates[HERE]), statistics.median(rates[other])
    print(f"\n{args.store}, {args.entries} entries, {args.workers} processes, batch {args.batch}:")
    print(f"this  ({HERE}) {a:8.0f} entries/s\nother ({other}) {b:8.0f} entries/s")
    ratios = [x / y for x, y in zip(rates[HERE], rates[other], strict=True)]
    print(f"ratio {a / b:.2f}, median of the rounds' ratios {statistics.median(ratios):.2f}")


def history_both(args: argparse.Namespace) -> None:
    """Each round, on one fresh database each: crmsync with history, crmsync without,
    PgQueuer, in an order that rotates. Prints the ratios history on / off and on /
    PgQueuer."""
    sides = {"on": crmsync_worker, "off": crmsync_worker_off, "pgqueuer": pgqueuer_worker}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        names = list(sides)
        names = names[r % 3 :] + names[: r % 3]
        for name in names:
            url = make_db(args.pg_url)
            try:
                if name == "pgqueuer":
                    asyncio.run(fill_pgqueuer(url, args.entries))
                else:
                    fill_crmsync(url, args.entries)
                rates[name].append(args.entries / timed(sides[name], url, args.workers, args.batch))
            finally:
                drop_db(args.pg_url, url)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        on, off, pg = (rates[n][-1] for n in ("on", "off", "pgqueuer"))
        print(
            f"round {r + 1}: history on {on:.0f}/s, off {off:.0f}/s, PgQueuer {pg:.0f}/s;"
            f" on/off {on / off:.2f}, on/PgQueuer {on / pg:.2f} (load average {load})",
            flush=True,
        )
    on, off, pg = (statistics.median(rates[n]) for n in ("on", "off", "pgqueuer"))
    print(f"\n{args.entries} entries, {args.workers} processes, batch {args.batch}:")
    print(f"history on  {on:8.0f} entries/s\nhistory off {off:8.0f} entries/s")
    print(f"PgQueuer    {pg:8.0f} jobs/s")
    print(f"ratio on/off {on / off:.2f}, on/PgQueuer {on / pg:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pg-url", default=DEFAULT_PG, help="an admin URL of the server")
    p.add_argument("--entries", type=int, default=200_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--against", metavar="SRC", help="another tree's src folder to compare with")
    p.add_argument("--store", choices=["sqlite", "postgresql"], default="postgresql")
    p.add_argument(
        "--history",
        choices=["on", "off", "both"],
        default="on",
        help="crmsync with its sync history written (on), not (off), or both in each round",
    )
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        one_side(args.pg_url, args.entries, args.workers, args.batch, args.history == "on")
        return
    if args.against:
        against(args)
        return
    if args.history == "both":
        history_both(args)
        return

    ours: list[float] = []
    theirs: list[float] = []
    for r in range(args.rounds):
        url = make_db(args.pg_url)
        try:
            fill_crmsync(url, args.entries)
            asyncio.run(fill_pgqueuer(url, args.entries))
            ours_worker = crmsync_worker if args.history == "on" else crmsync_worker_off
            if r % 2 == 0:
                t_ours = timed(ours_worker, url, args.workers, args.batch)
                t_theirs = timed(pgqueuer_worker, url, args.workers, args.batch)
            else:
                t_theirs = timed(pgqueuer_worker, url, args.workers, args.batch)
                t_ours = timed(ours_worker, url, args.workers, args.batch)
        finally:
            drop_db(args.pg_url, url)
        ours.append(args.entries / t_ours)
        theirs.append(args.entries / t_theirs)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"round {r + 1}: crmsync {ours[-1]:.0f}/s, PgQueuer {theirs[-1]:.0f}/s,"
            f" ratio {ours[-1] / theirs[-1]:.2f} (load average {load})",
            flush=True,
        )
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"\n{args.entries} entries, {args.workers} processes, batch {args.batch}:")
    print(f"crmsync  {a:8.0f} entries/s\nPgQueuer {b:8.0f} jobs/s\nratio    {a / b:8.2f}")
    ratios = [x / y for x, y in zip(ours, theirs, strict=True)]
    print(f"median of the rounds' ratios {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
