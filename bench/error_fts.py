"""SQLite's error search index (migration 0004): what it costs when errors are written,
and what it buys when they are searched, against the same store without it, same run.

Usage: ``.venv/bin/python bench/error_fts.py [--rows 1000000] [--park 10000]
[--batch 100] [--rounds 3] [--calls 20]``

A fresh migrated SQLite store gets ``--rows`` queue entries and ``--rows`` errors
(``bench/console.py``'s rows, through the index triggers), then:

- search: ``sync_errors.list_errors`` (first page and ``total``, every status) as it
  runs (the plan ``error_search.plan`` chooses, its sampling included), forced through
  the index, and forced to the scan the index replaces, for a rare term, a term
  matching 0.1% of the rows, terms in 11% and 20% of them (either side of
  ``SCAN_SHARE``), one matching every row, and a two-character term (a scan either
  way): median and p95 of ``--calls`` calls, and the ratio of the scan to the plan;
- rebuild: FTS5 ``rebuild`` of the whole index, which is what migration 0004 costs a
  store upgraded with that many errors;
- park: ``--park`` new queue entries parked as errors through ``queue.record`` (the
  worker's call: one transaction per ``--batch`` failures), then the same errors failing
  again with another message (an update of the searched column), with the triggers and
  without them (dropped for the purpose), in alternating rounds; medians and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import sqlalchemy as sa
from sqlalchemy import Engine

from console import fill, make_store, timed
from crmsync.domain import STANDARD_OBJECTS
from crmsync.store import error_search, queue, sync_errors
from crmsync.store.db import create_store_engine
from crmsync.store.schema import ERROR_FTS, sync_queue
from crmsync.store.sync_errors import make_filters
from crmsync.store.types import utcnow


def search(engine: Engine, rows: int, calls: int) -> None:
    terms = {
        "rare label fragment": f"user{rows // 2 + 7}@",
        "(42), 0.1% of rows": "(42)",
        "s (1, 11% of rows": "s (1",
        "0x80040333, 20% of rows": "0x80040333",
        "every row": "already exists",
        "two characters (scan)": "zz",
    }
    print(
        f"{'search (all statuses)':26} {'matches':>9} {'plan':>5} {'as run ms':>17}"
        f" {'index ms':>17} {'scan ms':>17} ratio"
    )
    for name, q in terms.items():
        filters = make_filters(STANDARD_OBJECTS, q=q, status="all")
        with engine.connect() as conn:
            total = sync_errors.list_errors(conn, filters)["total"]
            chosen = "index" if error_search.plan(conn, q) else "scan"
            run = timed(calls, lambda c=conn, f=filters: sync_errors.list_errors(c, f))
            with mock.patch.object(error_search, "plan", lambda c, q: True):
                index = timed(calls, lambda c=conn, f=filters: sync_errors.list_errors(c, f))
            with mock.patch.object(error_search, "plan", lambda c, q: False):
                scan = timed(calls, lambda c=conn, f=filters: sync_errors.list_errors(c, f))
        print(
            f"{name:26} {total:9,} {chosen:>5} {run[0]:8.1f} /{run[1]:7.1f}"
            f" {index[0]:8.1f} /{index[1]:7.1f} {scan[0]:8.1f} /{scan[1]:7.1f}"
            f" {scan[0] / run[0]:5.1f}x"
        )


def rebuild(engine: Engine) -> None:
    with engine.begin() as conn:
        start = time.perf_counter()
        conn.execute(sa.text(f"INSERT INTO {ERROR_FTS} ({ERROR_FTS}) VALUES ('rebuild')"))
        print(f"rebuild of the index: {time.perf_counter() - start:.1f} s")


def _entries(engine: Engine, tag: str, n: int) -> list[queue.Entry]:
    """``n`` new pending entries, as a worker would have claimed them."""
    q, now = sync_queue.c, utcnow()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_queue),
            [
                {
                    "object": "lead",
                    "direction": "to_crm",
                    "record_key": f"{tag}-{i}",
                    "record_id": 10_000_000 + i,
                    "operation": "update",
                    "label": f"parked{i}@example.com",
                    "first_queued_at": now,
                    "last_changed_at": now,
                    "next_attempt_at": now,
                }
                for i in range(n)
            ],
        )
        rows = conn.execute(sa.select(sync_queue).where(q.record_key.like(f"{tag}-%"))).mappings()
        return [
            queue.Entry(
                id=r["id"],
                object=r["object"],
                direction=r["direction"],
                record_key=r["record_key"],
                record_id=r["record_id"],
                crm_id=r["crm_id"],
                operation=r["operation"],
                label=r["label"],
                payload=None,
                version=r["version"],
                attempts=r["attempts"],
                first_queued_at=r["first_queued_at"],
            )
            for r in rows
        ]


def _park_all(engine: Engine, entries: list[queue.Entry], batch: int, message: str) -> float:
    start = time.perf_counter()
    for i in range(0, len(entries), batch):
        failed = [
            queue.Failed(e, "0x80040333", f"{message} ({e.record_key})")
            for e in entries[i : i + batch]
        ]
        queue.record(engine, queue.Outcome(failed=failed))
    return time.perf_counter() - start


def park(engine: Engine, n: int, batch: int, rounds: int) -> None:
    with engine.connect() as conn:
        triggers = conn.execute(
            sa.text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
                " AND tbl_name = 'sync_error' AND name LIKE :prefix"
            ),
            {"prefix": f"{ERROR_FTS}%"},
        ).all()
    assert len(triggers) == 3, triggers

    def set_triggers(on: bool) -> None:
        with engine.begin() as conn:
            for name, sql in triggers:
                conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
                if on:
                    conn.execute(sa.text(sql))

    times: dict[tuple[bool, str], list[float]] = {}
    for r in range(rounds):
        for on in (True, False):
            set_triggers(on)
            entries = _entries(engine, f"park{r}{'on' if on else 'off'}", n)
            first = _park_all(engine, entries, batch, "Duplicate record detected")
            again = _park_all(engine, entries, batch, "Privilege missing")
            times.setdefault((on, "park"), []).append(first)
            times.setdefault((on, "again"), []).append(again)
    set_triggers(True)
    print(
        f"\n{n:,} errors written through queue.record, {batch} per transaction, median of {rounds}"
    )
    for step, label in (("park", "parked (insert)"), ("again", "failed again, new message")):
        on = statistics.median(times[(True, step)])
        off = statistics.median(times[(False, step)])
        print(
            f"{label:28} with index {on:6.2f} s ({n / on:7,.0f}/s)"
            f"  without {off:6.2f} s ({n / off:7,.0f}/s)  cost +{(on / off - 1) * 100:.0f}%"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="queue entries and errors each")
    p.add_argument("--park", type=int, default=10_000, help="errors parked per round")
    p.add_argument("--batch", type=int, default=100, help="failures per transaction")
    p.add_argument("--rounds", type=int, default=3, help="rounds with and without the index")
    p.add_argument("--calls", type=int, default=20, help="timed calls per search")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = make_store("sqlite", "", Path(tmp))
        engine = create_store_engine(url)
        start = time.perf_counter()
        fill(engine, "sqlite", args.rows)
        print(f"## sqlite: {args.rows:,} errors (filled in {time.perf_counter() - start:.0f} s)")
        search(engine, args.rows, args.calls)
        rebuild(engine)
        park(engine, args.park, args.batch, args.rounds)
        engine.dispose()


if __name__ == "__main__":
    main()
