"""Sync Status and Sync Errors at scale: the console's queries against a full scan, same run.

Usage: ``.venv/bin/python bench/console.py [--rows 1000000] [--calls 20]
[--backend sqlite|postgresql|both] [--pg-url URL] [--no-export]``

For each backend, a fresh migrated store gets ``--rows`` queue entries (97% pending,
over four objects, both directions and three operations) and ``--rows`` sync errors
(10% open, 90% resolved), written in bulk by SQL. Then each query runs ``--calls``
times and the median and p95 are printed next to the baselines measured on the same
tables in the same run: ``SELECT count(*)`` (a full scan) and a primary-key read.

- backlog: ``status.backlog`` (the Sync Status table, all objects, with trend and ETA);
- details: ``status.details`` of ``lead`` (counts and the oldest record per operation);
  both again with ``UNFOLDED`` backlog count rows not yet folded by the upkeep (the
  bulk fill's own count rows are folded once before measuring, as upkeep would);
- last hour: ``status.last_hour``; oldest: ``status.oldest_waiting`` (/healthz, alerts);
- errors list: first page of open errors with ``total``; summary: counts of open errors;
- search: ``q=`` a rare label fragment over every status (a few matches in 1M rows),
  and a common one (matches ~10%): both count their total;
- export first bytes: time to the first chunk of the CSV export of every error;
- export (unless ``--no-export``): every error as CSV, rows/s and peak RSS growth,
  against PostgreSQL's ``COPY (SELECT ...) TO STDOUT WITH CSV`` of the same rows (best
  of ``EXPORT_ROUNDS`` runs each, in turns).

On PostgreSQL the search is measured twice: without the ``pg_trgm`` GIN indexes of
migration 0002 (dropped for the purpose), then with them (created again). The databases
are dropped at the end.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from crmsync.store.schema import PG_SEARCH_INDEXES

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
OBJECTS = ("lead", "contact", "account", "opportunity")
CODES = ("0x80040333", "0x80040237", "0x80040216", "0x80048306", "local_constraint")
EXPORT_ROUNDS = 3
# Backlog count rows left unfolded for the second backlog measure: what thousands of
# queue writes a second leave between two folds (every COMPACT_SECONDS).
UNFOLDED = 10_000


# -- stores -------------------------------------------------------------------------------


def make_store(backend: str, pg_url: str, workdir: Path) -> str:
    from crmsync.config import Settings
    from crmsync.store.db import create_store_engine
    from crmsync.store.migrate import upgrade

    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'bench.db'}"
    else:
        name = f"crmsync_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = sa.make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    engine = create_store_engine(url, poolclass=sa.NullPool)
    upgrade(engine, Settings().object_specs().values())
    engine.dispose()
    return url


def drop_store(backend: str, pg_url: str, url: str) -> None:
    if backend == "postgresql":
        name = sa.make_url(url).database
        admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _series(backend: str, n: int) -> str:
    """A row source ``s(i)`` of 1..n in the backend's SQL."""
    if backend == "postgresql":
        return f"generate_series(1, {n}) AS s(i)"
    return (
        "(WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c"
        f" WHERE i < {n}) SELECT i FROM c) AS s"
    )


def fill(engine: Engine, backend: str, n: int) -> None:
    """``n`` queue entries and ``n`` errors, spread over objects, directions and time."""

    def ago(seconds: str) -> str:
        if backend == "postgresql":
            return f"(now() - make_interval(secs => {seconds}))"
        return f"strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || ({seconds}) || ' seconds')"

    obj = "(ARRAY['lead','contact','account','opportunity'])[1 + i % 4]"
    direction = "(ARRAY['to_crm','from_crm'])[1 + (i / 4) % 2]"
    operation = "(ARRAY['insert','update','delete'])[1 + (i / 8) % 3]"
    code = f"(ARRAY[{','.join(repr(c) for c in CODES)}])[1 + i % {len(CODES)}]"
    if backend == "sqlite":
        obj = (
            "CASE i % 4 WHEN 0 THEN 'lead' WHEN 1 THEN 'contact' WHEN 2 THEN 'account'"
            " ELSE 'opportunity' END"
        )
        direction = "CASE (i / 4) % 2 WHEN 0 THEN 'to_crm' ELSE 'from_crm' END"
        operation = "CASE (i / 8) % 3 WHEN 0 THEN 'insert' WHEN 1 THEN 'update' ELSE 'delete' END"
        code = (
            "CASE i % 5 "
            + " ".join(f"WHEN {k} THEN '{c}'" for k, c in enumerate(CODES[:-1]))
            + f" ELSE '{CODES[-1]}' END"
        )
    queued = ago("i")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO sync_queue (object, direction, record_key, record_id, crm_id,"
                " operation, label, state, first_queued_at, last_changed_at, version, attempts,"
                " next_attempt_at)"
                f" SELECT {obj}, {direction}, CAST(i AS VARCHAR), i, NULL, {operation},"
                " 'user' || i || '@example.com',"
                " CASE WHEN i % 33 = 0 THEN 'parked' ELSE 'pending' END,"
                f" {queued}, {queued}, 1, 0, {queued} FROM {_series(backend, n)}"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO sync_error (object, direction, record_key, record_id, crm_id,"
                " record_label, operation, error_code, error_message, first_failed_at,"
                " last_failed_at, attempts, status)"
                f" SELECT {obj}, {direction}, CAST(i AS VARCHAR), i, NULL,"
                " 'user' || i || '@example.com', "
                f"{operation}, {code},"
                " 'A record with matching key values already exists (' || (i % 1000) || ')',"
                f" {ago('i + 60')}, {ago('i')}, 1 + i % 7,"
                " CASE WHEN i % 10 = 0 THEN 'open' ELSE 'resolved' END"
                f" FROM {_series(backend, n)}"
            )
        )
        # Throughput: one hour of buckets for each object, so last hour has work to sum.
        for k in range(8):
            conn.execute(
                sa.text(
                    "INSERT INTO sync_throughput (bucket_start, object, direction, operation,"
                    f" synced) SELECT {ago(str(k * 900))}, o, 'to_crm', 'insert', 100 FROM"
                    " (SELECT 'lead' AS o UNION ALL SELECT 'contact') AS x"
                )
            )
    # The bulk insert appended one backlog count row per entry (store/backlog_counts.py):
    # fold them as the upkeep of a running worker or console does every few seconds.
    from crmsync.store.maintenance import compact_counts

    start = time.perf_counter()
    folded = compact_counts(engine)
    print(f"folded {folded:,} backlog count rows in {time.perf_counter() - start:.1f} s")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE" if backend == "postgresql" else "ANALYZE"))


def unfold(engine: Engine, rows: int) -> None:
    """Append ``rows`` count rows that sum to nothing, as between two folds."""
    from crmsync.store.schema import sync_backlog_count

    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_backlog_count),
            [
                {"object": OBJECTS[k % 4], "direction": "to_crm", "operation": "update", "n": n}
                for k in range(rows // 2)
                for n in (1, -1)
            ],
        )


# -- timing -------------------------------------------------------------------------------


def timed(calls: int, fn: Callable[[], object]) -> tuple[float, float]:
    """Median and p95 in milliseconds of ``calls`` runs of ``fn`` (after one warm-up)."""
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


def measure(engine: Engine, calls: int, rare: str, common: str) -> dict[str, tuple[float, float]]:
    from crmsync.domain import STANDARD_OBJECTS
    from crmsync.store import status, sync_errors
    from crmsync.store.maintenance import compact_counts
    from crmsync.store.sync_errors import make_filters

    zone = __import__("zoneinfo").ZoneInfo("Asia/Kolkata")
    results: dict[str, tuple[float, float]] = {}

    def run(name: str, query: Callable[[sa.Connection], object]) -> None:
        with engine.connect() as conn:
            results[name] = timed(calls, lambda: query(conn))

    run(
        "baseline: count(*) sync_queue",
        lambda c: c.execute(sa.text("SELECT count(*) FROM sync_queue")).scalar(),
    )
    run(
        "baseline: count(*) sync_error",
        lambda c: c.execute(sa.text("SELECT count(*) FROM sync_error")).scalar(),
    )
    run(
        "baseline: pk read sync_error",
        lambda c: c.execute(sa.text("SELECT * FROM sync_error WHERE id = 4242")).all(),
    )
    run("backlog", lambda c: status.backlog(c, STANDARD_OBJECTS))
    run("details (lead)", lambda c: status.details(c, "lead"))
    unfold(engine, UNFOLDED)
    run(f"backlog, {UNFOLDED:,} count rows unfolded", lambda c: status.backlog(c, STANDARD_OBJECTS))
    run(f"details, {UNFOLDED:,} count rows unfolded", lambda c: status.details(c, "lead"))
    compact_counts(engine)
    run("last hour (+05:30)", lambda c: status.last_hour(c, STANDARD_OBJECTS, zone))
    run("oldest waiting (healthz)", lambda c: status.oldest_waiting(c, STANDARD_OBJECTS))
    open_errors = make_filters(STANDARD_OBJECTS)
    run("errors list (open, first page)", lambda c: sync_errors.list_errors(c, open_errors))
    run("errors summary (open)", lambda c: sync_errors.summary(c, open_errors))
    rare_q = make_filters(STANDARD_OBJECTS, q=rare, status="all")
    common_q = make_filters(STANDARD_OBJECTS, q=common, status="all")
    run(f"search q={rare!r} (all statuses)", lambda c: sync_errors.list_errors(c, rare_q))
    run(f"search q={common!r} (all statuses)", lambda c: sync_errors.list_errors(c, common_q))
    every = make_filters(STANDARD_OBJECTS, status="all")

    def first_bytes() -> None:
        chunks = sync_errors.export(engine, every, "csv")
        next(chunks)
        chunks.close()  # type: ignore[attr-defined]

    results["export first bytes (csv, all)"] = timed(calls, first_bytes)
    return results


def measure_export(engine: Engine, backend: str, out: Path) -> dict[str, Any]:
    """Rows/s of the CSV export (and, on PostgreSQL, of a plain ``COPY`` of the same rows),
    the best of ``EXPORT_ROUNDS`` runs of each, taken in turns so that both meet the same
    load on a shared machine; peak RSS growth over all the exports."""
    from crmsync.domain import STANDARD_OBJECTS
    from crmsync.store import sync_errors
    from crmsync.store.sync_errors import ERROR_FIELDS, make_filters

    every = make_filters(STANDARD_OBJECTS, status="all")
    columns = ", ".join(ERROR_FIELDS)
    copy = (
        f"COPY (SELECT {columns} FROM sync_error ORDER BY last_failed_at DESC, id DESC)"
        " TO STDOUT WITH CSV HEADER"
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    export_s: list[float] = []
    copy_s: list[float] = []
    rows = 0
    for _ in range(EXPORT_ROUNDS):
        start = time.perf_counter()
        rows = 0
        with out.open("w", encoding="utf-8", newline="") as fh:
            for chunk in sync_errors.export(engine, every, "csv"):
                fh.write(chunk)
                rows += chunk.count("\r\n")
        export_s.append(time.perf_counter() - start)
        if backend == "postgresql":
            start = time.perf_counter()
            with engine.raw_connection() as raw, out.open("wb") as fh:
                cursor = raw.cursor()
                with cursor.copy(copy) as stream:  # type: ignore[attr-defined]
                    for block in stream:
                        fh.write(block)
            copy_s.append(time.perf_counter() - start)
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    result: dict[str, Any] = {
        "rows_per_s": (rows - 1) / min(export_s),
        "rss_growth_mb": growth_mb,
    }
    if copy_s:
        result["copy_rows_per_s"] = (rows - 1) / min(copy_s)
    return result


def run_backend(backend: str, args: argparse.Namespace, workdir: Path) -> None:
    from crmsync.store.db import create_store_engine

    url = make_store(backend, args.pg_url, workdir)
    try:
        engine = create_store_engine(url)
        start = time.perf_counter()
        fill(engine, backend, args.rows)
        print(
            f"\n## {backend}: {args.rows:,} queue entries + {args.rows:,} errors "
            f"(filled in {time.perf_counter() - start:.0f} s)"
        )
        rare = f"user{args.rows // 2 + 7}@"
        common = "(42)"
        if backend == "postgresql":
            with engine.begin() as conn:
                for name in PG_SEARCH_INDEXES:
                    conn.execute(sa.text(f"DROP INDEX {name}"))
        results = measure(engine, args.calls, rare, common)
        if backend == "postgresql":
            with engine.begin() as conn:
                for name, column in PG_SEARCH_INDEXES.items():
                    conn.execute(
                        sa.text(
                            f"CREATE INDEX {name} ON sync_error USING gin ({column} gin_trgm_ops)"
                        )
                    )
                conn.execute(sa.text("ANALYZE sync_error"))
            from crmsync.domain import STANDARD_OBJECTS
            from crmsync.store import sync_errors
            from crmsync.store.sync_errors import make_filters

            for q in (rare, common):
                filters = make_filters(STANDARD_OBJECTS, q=q, status="all")
                with engine.connect() as conn:
                    results[f"search q={q!r} with pg_trgm"] = timed(
                        args.calls, lambda c=conn, f=filters: sync_errors.list_errors(c, f)
                    )
        scan = results["baseline: count(*) sync_queue"][0]
        print(f"{'query':44} {'median ms':>10} {'p95 ms':>9} {'scan/median':>12}")
        for name, (median, p95) in results.items():
            print(f"{name:44} {median:10.1f} {p95:9.1f} {scan / median:12.1f}")
        if not args.no_export:
            exported = measure_export(engine, backend, workdir / "export.csv")
            line = (
                f"export csv: {exported['rows_per_s']:,.0f} rows/s,"
                f" peak RSS +{exported['rss_growth_mb']:.0f} MB"
            )
            if "copy_rows_per_s" in exported:
                ratio = exported["rows_per_s"] / exported["copy_rows_per_s"]
                line += f"; COPY {exported['copy_rows_per_s']:,.0f} rows/s; ratio {ratio:.2f}"
            print(line)
        engine.dispose()
    finally:
        drop_store(backend, args.pg_url, url)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="queue entries and errors each")
    p.add_argument("--calls", type=int, default=20, help="timed calls per query")
    p.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--pg-url", default=DEFAULT_PG, help="an admin URL of the server")
    p.add_argument("--no-export", action="store_true", help="skip the full export")
    args = p.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            run_backend(backend, args, Path(tmp))


if __name__ == "__main__":
    main()
