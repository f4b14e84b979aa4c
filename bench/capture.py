"""Cost of change capture: update transactions per second with the capture triggers
installed versus the same writes with the triggers absent, in the same run.

SQLite: one writer (SQLite has one at a time), at ``synchronous=FULL`` (SQLite's
default, what another program gets; the target's setting) and at ``NORMAL`` (crmsync's
own connections). PostgreSQL: 8 client threads. Each transaction updates one random
lead's last name through the plain driver, as another application would. Rounds
alternate (with, without, with, ...) and the medians are compared. Target: ratio >= 0.85
on both backends.

The triggers only append to the capture log; the worker folds the log into the queue.
After each round with capture on, the bench folds what the round logged and prints the
fold's rate next to the capture rate: the fold must keep up with what it is given.

    .venv/bin/python bench/capture.py [--seconds 3] [--rounds 5] [--rows 10000]
        [--object lead|wide]

``--object wide`` updates a wide object instead (40 mapped fields of mixed types,
``bench/wide.py``): its triggers compare every pushed column (issue 15's target: the
same ratio >= 0.85).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import sqlalchemy as sa

from crmsync.config import load_settings
from crmsync.domain import ObjectSpec
from crmsync.store import capture
from crmsync.store.capture import drop_triggers, install_triggers
from crmsync.store.db import create_store_engine, write_transaction
from crmsync.store.migrate import upgrade
from wide import wide_mapping  # bench/wide.py

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DB = "crmsync_bench_capture"
# What the rounds update: (table, column), and the mapping they run with.
TARGET = ("lead", "last_name")
SPECS: list[ObjectSpec] = []
UPDATE_SQLITE = "UPDATE lead SET last_name = ? WHERE id = ?"
UPDATE_PG = "UPDATE lead SET last_name = %s WHERE id = %s"


def captured_tables() -> list[str]:
    return [s.table for s in SPECS if s.flow.pushes]


def prepare(engine: sa.Engine, rows: int) -> None:
    upgrade(engine, SPECS)
    table, column = TARGET
    with write_transaction(engine) as conn:
        drop_triggers(conn, captured_tables())
        conn.execute(sa.text(f"DELETE FROM {table}"))
        conn.execute(
            sa.text(f"INSERT INTO {table} (id, {column}, crm_id) VALUES (:i, :e, :c)"),
            [{"i": i, "e": f"l{i}@example.com", "c": f"crm-{i}"} for i in range(1, rows + 1)],
        )
        conn.execute(sa.text("DELETE FROM sync_queue"))


def set_capture(engine: sa.Engine, on: bool) -> None:
    with write_transaction(engine) as conn:
        drop_triggers(conn, captured_tables())
        if on:
            install_triggers(conn, SPECS)
        conn.execute(sa.text("DELETE FROM sync_change"))
        conn.execute(sa.text("DELETE FROM sync_queue"))


def fold_rate(engine: sa.Engine) -> float:
    """Changes folded per second, folding everything the last round logged."""
    start = time.perf_counter()
    n = capture.fold_pending(engine)
    return n / (time.perf_counter() - start) if n else 0.0


def sqlite_tps(path: Path, rows: int, seconds: float, synchronous: str) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    rnd = random.Random(1)
    n, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(UPDATE_SQLITE, (f"n{n}", rnd.randint(1, rows)))
        conn.execute("COMMIT")
        n += 1
    conn.close()
    return n / (time.perf_counter() - start)


def pg_tps(dsn: str, rows: int, seconds: float, clients: int = 8) -> float:
    counts = [0] * clients
    stop = threading.Event()

    def client(k: int) -> None:
        rnd = random.Random(k)
        with psycopg.connect(dsn, autocommit=False) as conn:
            while not stop.is_set():
                conn.execute(UPDATE_PG, (f"n{counts[k]}", rnd.randint(1, rows)))
                conn.commit()
                counts[k] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def compare(
    label: str, engine: sa.Engine, measure: Callable[[], float], rounds: int
) -> tuple[float, float, float]:
    with_capture: list[float] = []
    without: list[float] = []
    folds: list[float] = []
    for _ in range(rounds):
        for on, bucket in ((True, with_capture), (False, without)):
            set_capture(engine, on)
            bucket.append(measure())
            if on:
                folds.append(fold_rate(engine))
    a, b = statistics.median(with_capture), statistics.median(without)
    f = statistics.median(folds)
    print(
        f"{label}: capture on {a:,.0f} tx/s, off {b:,.0f} tx/s, ratio {a / b:.2f};"
        f" fold {f:,.0f} changes/s ({f / a:.1f}x the capture rate)",
        flush=True,
    )
    return a, b, a / b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--skip-sqlite", action="store_true")
    ap.add_argument("--pg-db", default=PG_DB, help="scratch database name (dropped at the end)")
    ap.add_argument("--object", choices=["lead", "wide"], default="lead")
    args = ap.parse_args()
    global TARGET, UPDATE_SQLITE, UPDATE_PG
    objects = wide_mapping() if args.object == "wide" else {}
    SPECS[:] = load_settings(objects=objects).object_specs().values()
    TARGET = ("wide", "f0") if args.object == "wide" else ("lead", "last_name")
    UPDATE_SQLITE = f"UPDATE {TARGET[0]} SET {TARGET[1]} = ? WHERE id = ?"
    UPDATE_PG = UPDATE_SQLITE.replace("?", "%s")
    print(f"updating {TARGET[0]}.{TARGET[1]}", flush=True)

    if not args.skip_sqlite:
        sqlite_rounds(args)
    if not args.skip_postgres:
        postgres_rounds(args)


def sqlite_rounds(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        engine = create_store_engine(f"sqlite:///{path}", poolclass=sa.NullPool)
        prepare(engine, args.rows)
        # FULL is SQLite's default, what another program writing the file gets; NORMAL
        # is what crmsync's own connections use in WAL mode.
        for sync in ("FULL", "NORMAL"):
            compare(
                f"sqlite synchronous={sync}, 1 writer",
                engine,
                lambda sync=sync: sqlite_tps(path, args.rows, args.seconds, sync),
                args.rounds,
            )
        engine.dispose()


def postgres_rounds(args: argparse.Namespace) -> None:
    db = args.pg_db
    if not db.replace("_", "").isalnum():
        raise SystemExit(f"--pg-db: not a plain database name: {db}")
    admin = sa.create_engine(
        PG_ADMIN.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {db}"))
    dsn = PG_ADMIN.rsplit("/", 1)[0] + "/" + db
    engine = create_store_engine(dsn, poolclass=sa.NullPool)
    prepare(engine, args.rows)
    compare(
        "postgresql, 8 clients", engine, lambda: pg_tps(dsn, args.rows, args.seconds), args.rounds
    )
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))


if __name__ == "__main__":
    main()
