"""Sync Status reads with a capture log left unfolded: exact, and how fast.

Readers never fold: the backlog counts the log's unfolded tail as the fold would queue
it (``store.backlog``). Two measures per backend, each in the same run:

1. *Bulk load beside serve*: N leads inserted in one plain-SQL transaction while an
   upkeep thread does what ``crmsync serve``'s does (``maintenance.compact_counts``
   every ``COMPACT_SECONDS``; no worker). The first read right after the load must be
   exact; once the upkeep has folded the log, the read's p50 against the same read on
   a store that took ``--small`` leads. Target: ratio <= 2.
2. *Nothing folding*: ``--unfolded`` leads logged and no process folding; the read's
   median and ``crmsync status --json``'s wall time, a new process each time (target:
   under 1 s; beside it the same command on the empty store, most of which is the
   interpreter's start), then the read's p95 once folded (target: under 50 ms).

A read is what ``GET /api/v1/sync/status`` and ``crmsync status`` do: ``status.backlog``
in a read-only snapshot. PostgreSQL's statistics are refreshed after each load (as
autovacuum would, in time) unless ``--stale-stats``: then the reads run on what was last
analysed, as after an import with nothing running that analyses (readers never do).

    .venv/bin/python bench/status_reads.py [--rows 200000] [--small 2000] [--unfolded 1000000]
        [--backend sqlite|postgresql|both] [--stale-stats]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.domain import STANDARD_OBJECTS
from crmsync.store import capture, status
from crmsync.store.db import create_store_engine, read_transaction, write_transaction
from crmsync.store.maintenance import COMPACT_SECONDS, compact_counts
from crmsync.store.migrate import upgrade

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_DB = "crmsync_bench_status_reads"


@contextmanager
def store(backend: str) -> Iterator[sa.Engine]:
    """A fresh, migrated store of ``backend``, dropped afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            engine = create_store_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
            upgrade(engine, Settings().object_specs().values())
            yield engine
            engine.dispose()
        return
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {PG_DB}"))
    engine = create_store_engine(PG_ADMIN.rsplit("/", 1)[0] + "/" + PG_DB)
    upgrade(engine, Settings().object_specs().values())
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)"))
        admin.dispose()


ANALYZE_AFTER_LOAD = [True]  # False with --stale-stats


def load(engine: sa.Engine, n: int) -> None:
    """``n`` new leads in one transaction of plain SQL, as an import writes them."""
    series = (
        "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < :n)"
        " INSERT INTO lead (email, last_name) SELECT 'b' || x || '@example.com', 'n' FROM g"
        if engine.dialect.name == "sqlite"
        else "INSERT INTO lead (email, last_name)"
        " SELECT 'b' || x || '@example.com', 'n' FROM generate_series(1, :n) AS x"
    )
    with write_transaction(engine) as conn:
        conn.execute(sa.text(series), {"n": n})
    if engine.dialect.name == "postgresql" and ANALYZE_AFTER_LOAD[0]:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE"))


def read(engine: sa.Engine) -> tuple[float, int]:
    """One status read: (seconds, lead inserts waiting)."""
    start = time.perf_counter()
    with read_transaction(engine) as conn:
        body = status.backlog(conn, STANDARD_OBJECTS)
    took = time.perf_counter() - start
    return took, {r["object"]: r for r in body["objects"]}["lead"]["inserts"]


def timings(engine: sa.Engine, n: int) -> list[float]:
    return [read(engine)[0] for _ in range(n)]


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(len(xs) * 0.95) - 1)]


def log_size(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM sync_change")).scalar_one())


class Upkeep:
    """What ``crmsync serve`` does between its rounds: fold the log and the counts."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine, self.stop = engine, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(COMPACT_SECONDS):
            compact_counts(self.engine)

    def __enter__(self) -> Upkeep:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def beside_serve(backend: str, rows: int, small: int, reads: int) -> None:
    with store(backend) as engine:
        load(engine, small)
        capture.fold_pending(engine)
        base = timings(engine, reads)
    with store(backend) as engine, Upkeep(engine):
        load(engine, rows)
        took, counted = read(engine)
        exact = "exact" if counted == rows else f"WRONG ({counted:,})"
        deadline = time.monotonic() + 600
        while log_size(engine) and time.monotonic() < deadline:
            time.sleep(0.5)
        after = timings(engine, reads)
    ratio = statistics.median(after) / statistics.median(base)
    print(
        f"{backend}: first read after {rows:,} inserts beside serve: {counted:,} ({exact}) in"
        f" {took * 1000:.0f} ms; then p50 {statistics.median(after) * 1000:.2f} ms against"
        f" {statistics.median(base) * 1000:.2f} ms with {small:,}: ratio {ratio:.2f}",
        flush=True,
    )


def cli(engine: sa.Engine) -> tuple[float, int]:
    """``crmsync status --json`` as an operator runs it: (wall seconds, lead inserts)."""
    url = engine.url.render_as_string(hide_password=False)
    env = {**os.environ, "CRMSYNC_DATABASE_URL": url}
    start = time.perf_counter()
    out = subprocess.run(
        [str(Path(sys.executable).with_name("crmsync")), "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    took = time.perf_counter() - start
    return took, {r["object"]: r for r in json.loads(out)["objects"]}["lead"]["inserts"]


def nothing_folding(backend: str, unfolded: int, reads: int) -> None:
    with store(backend) as engine:
        empty = statistics.median(cli(engine)[0] for _ in range(3))
        load(engine, unfolded)
        runs = [read(engine) for _ in range(3)]
        commands = [cli(engine) for _ in range(3)]
        counted = runs[0][1]
        exact = "exact" if all(c == unfolded for _, c in runs) else f"WRONG ({counted:,})"
        median = statistics.median(t for t, _ in runs)
        command = statistics.median(t for t, _ in commands)
        command_exact = "exact" if all(c == unfolded for _, c in commands) else "WRONG"
        capture.fold_pending(engine)
        compact_counts(engine)
        folded = timings(engine, reads)
    print(
        f"{backend}: {unfolded:,} changes unfolded, nothing folding: {counted:,} ({exact}),"
        f" median {median * 1000:.0f} ms of 3; `crmsync status` {command_exact} in"
        f" {command * 1000:.0f} ms (on an empty store {empty * 1000:.0f} ms: ratio"
        f" {command / empty:.2f}); once folded p50"
        f" {statistics.median(folded) * 1000:.2f} ms, p95 {p95(folded) * 1000:.2f} ms",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--small", type=int, default=2_000)
    ap.add_argument("--unfolded", type=int, default=1_000_000)
    ap.add_argument("--reads", type=int, default=50)
    ap.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--stale-stats", action="store_true", help="PostgreSQL: no ANALYZE")
    args = ap.parse_args()
    ANALYZE_AFTER_LOAD[0] = not args.stale_stats
    for backend in ("sqlite", "postgresql") if args.backend == "both" else (args.backend,):
        beside_serve(backend, args.rows, args.small, args.reads)
        nothing_folding(backend, args.unfolded, args.reads)


if __name__ == "__main__":
    main()
