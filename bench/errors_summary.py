"""The errors summary heading every Sync Errors page: counts kept by triggers against the
scan they replace, same run, same store.

Usage: ``.venv/bin/python bench/errors_summary.py [--rows 1000000] [--open 100000]
[--calls 30] [--backend sqlite|postgresql|both] [--pg-url URL]``

A fresh migrated store gets ``--rows`` sync errors (``--open`` of them open, the rest
resolved) over four objects, both directions, five codes and their categories, and four
fields (one in five without a field), written in bulk by SQL; the trigger's count rows
are folded once, as the upkeep does every few seconds. Measured ``--calls`` times each
(median and p95 in ms): ``SELECT count(*)`` of the errors; the summary by a scan (the
same open errors, counted with a filter that makes it scan); the summary from the
counts (``store.error_counts``); the same with ``UNFOLDED`` count rows not yet folded.
The counts are checked equal to the scan's. Prints scan/summary ratios.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import Engine

from console import DEFAULT_PG, _series, drop_store, make_store, timed

CODES = (
    ("0x80044331", "data_too_long"),
    ("0x80040333", "duplicate"),
    ("0x8004431a", "invalid_value"),
    ("http_503", "unavailable"),
    ("0x80040220", "permission"),
)
FIELDS = ("last_name", "email", "company", "first_name")
UNFOLDED = 10_000


def _case(backend: str, expr: str, values: list[str]) -> str:
    if backend == "postgresql":
        return f"(ARRAY[{','.join(values)}])[1 + ({expr}) % {len(values)}]"
    whens = " ".join(f"WHEN {k} THEN {v}" for k, v in enumerate(values))
    return f"CASE ({expr}) % {len(values)} {whens} END"


def fill(engine: Engine, backend: str, n: int, open_n: int) -> None:
    now = "now()" if backend == "postgresql" else "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    obj = _case(backend, "i", ["'lead'", "'contact'", "'account'", "'opportunity'"])
    direction = _case(backend, "i / 4", ["'to_crm'", "'from_crm'"])
    code = _case(backend, "i / 8", [f"'{c}'" for c, _ in CODES])
    category = _case(backend, "i / 8", [f"'{k}'" for _, k in CODES])
    field = _case(backend, "i / 40", [*(f"'{f}'" for f in FIELDS), "NULL"])
    every = max(1, n // max(1, open_n))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO sync_error (object, direction, record_key, record_id,"
                " record_label, operation, error_code, error_message, first_failed_at,"
                " last_failed_at, attempts, status, category, field)"
                f" SELECT {obj}, {direction}, CAST(i AS VARCHAR), i, 'user' || i, 'update',"
                f" {code}, 'failed (' || (i % 1000) || ')', {now}, {now}, 1,"
                f" CASE WHEN i % {every} = 0 THEN 'open' ELSE 'resolved' END, {category},"
                f" {field} FROM {_series(backend, n)}"
            )
        )
    from crmsync.store.maintenance import compact_counts

    compact_counts(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE" if backend == "postgresql" else "ANALYZE"))


def unfold(engine: Engine, rows: int) -> None:
    """Append ``rows`` count rows summing to nothing, as writers leave between folds."""
    half = [{"object": "lead", "direction": "to_crm", "error_code": "x", "category": "other"}] * (
        rows // 2
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO sync_error_count (object, direction, error_code, category, field, n)"
                " VALUES (:object, :direction, :error_code, :category, NULL, :n)"
            ),
            [{**r, "n": 1} for r in half] + [{**r, "n": -1} for r in half],
        )


def run_backend(backend: str, args: argparse.Namespace, workdir: Path) -> None:
    from crmsync.domain import STANDARD_OBJECTS
    from crmsync.store import sync_errors
    from crmsync.store.db import create_store_engine
    from crmsync.store.sync_errors import make_filters

    url = make_store(backend, args.pg_url, workdir)
    try:
        engine = create_store_engine(url)
        start = time.perf_counter()
        fill(engine, backend, args.rows, args.open)
        print(
            f"\n## {backend}: {args.rows:,} errors, {args.open:,} open"
            f" (filled in {time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.2f})"
        )
        counted = make_filters(STANDARD_OBJECTS)
        scanned = make_filters(STANDARD_OBJECTS, since="2000-01-01T00:00:00Z")
        assert counted.counted and not scanned.counted
        results: dict[str, tuple[float, float]] = {}
        with engine.connect() as conn:
            fast = sync_errors.summary(conn, counted)
            slow = sync_errors.summary(conn, scanned)
            assert fast == slow, "counts differ from the scan"
            assert fast["total"] == args.open, fast["total"]
            results["baseline: count(*) sync_error"] = timed(
                args.calls,
                lambda: conn.execute(sa.text("SELECT count(*) FROM sync_error")).scalar(),
            )
            results["summary by scan (open)"] = timed(
                args.calls, lambda: sync_errors.summary(conn, scanned)
            )
            results["summary from counts (open)"] = timed(
                args.calls, lambda: sync_errors.summary(conn, counted)
            )
            by_category = make_filters(STANDARD_OBJECTS, category="unavailable")
            results["summary from counts, category="] = timed(
                args.calls, lambda: sync_errors.summary(conn, by_category)
            )
        unfold(engine, UNFOLDED)
        with engine.connect() as conn:
            results[f"summary, {UNFOLDED:,} count rows unfolded"] = timed(
                args.calls, lambda: sync_errors.summary(conn, counted)
            )
        scan = results["summary by scan (open)"][0]
        count = results["baseline: count(*) sync_error"][0]
        print(f"{'query':40} {'median ms':>10} {'p95 ms':>9} {'scan/med':>9} {'count/med':>10}")
        for name, (median, p95) in results.items():
            print(
                f"{name:40} {median:10.1f} {p95:9.1f} {scan / median:9.1f} {count / median:10.1f}"
            )
        print(f"load after: {os.getloadavg()[0]:.2f}; counts equal the scan: yes")
        engine.dispose()
    finally:
        drop_store(backend, args.pg_url, url)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="errors in all")
    p.add_argument("--open", type=int, default=100_000, help="of which open")
    p.add_argument("--calls", type=int, default=30, help="timed calls per query")
    p.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--pg-url", default=DEFAULT_PG, help="an admin URL of the server")
    args = p.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            run_backend(backend, args, Path(tmp))


if __name__ == "__main__":
    main()
