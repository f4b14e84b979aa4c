"""The only-local pass in id ranges read side by side: every row once, in id order.

The store's ``only_local`` is stood in for by a list of ids (its contract: the first
``limit`` ids after ``after``, up to ``upto``), so that many layouts can be tried: rows
sparse, dense, bunched at either end, on a range's bound.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from crmsync.engine import audit
from crmsync.engine.audit import Auditor, Findings


def _pass(monkeypatch: pytest.MonkeyPatch, ids: list[int], last: int) -> tuple[list[int], int]:
    """Run the pass over ``ids`` (local only) in a table whose highest id is ``last``:
    the ids it found, in order, and how many rows the store was asked to read."""
    read = [0]

    def only_local(
        conn: Any, job_id: int, spec: Any, after: int, limit: int, started: Any, upto: Any
    ) -> list[dict[str, Any]]:
        rows = [i for i in ids if i > after and (upto is None or i <= upto)][:limit]
        read[0] += len(rows)
        return [{"id": i, "crm_id": None, "synced": False} for i in rows]

    monkeypatch.setattr(audit.store_audit, "only_local", only_local)
    monkeypatch.setattr(audit.store_audit, "last_id", lambda conn, spec: last)
    monkeypatch.setattr(audit.capture, "fold_pending", lambda engine, wait: None)
    auditor = Auditor.__new__(Auditor)
    auditor.engine = None  # type: ignore[assignment]
    monkeypatch.setattr(auditor, "_check_cancel", lambda job: None)
    monkeypatch.setattr(auditor, "_read", lambda fn, *args: fn(None, *args))
    found, out = Findings("lead"), []
    monkeypatch.setattr(found, "sample", lambda kind, **what: out.append(what["record_id"]))
    started = datetime(2026, 12, 4, tzinfo=UTC)
    job = SimpleNamespace(id=1)
    asyncio.run(auditor._only_local(job, None, False, found, started))  # type: ignore[arg-type]
    assert found.only_local == len(out)
    return out, read[0]


@pytest.mark.parametrize("seed", range(200))
def test_every_only_local_row_is_found_once_in_id_order(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr(audit, "PAGE", 3)
    rnd = random.Random(seed)
    last = rnd.randint(0, 80)
    layout = rnd.choice(["sparse", "dense", "low", "high", "bounds"])
    if layout == "sparse":
        ids = [i for i in range(1, last + 1) if rnd.random() < 0.1]
    elif layout == "dense":
        ids = [i for i in range(1, last + 1) if rnd.random() < 0.9]
    elif layout == "low":
        ids = list(range(1, last // 3 + 1))
    elif layout == "high":
        ids = list(range(last - last // 3 + 1, last + 1))
    else:  # each first range's bound and its neighbours, as the first page sees them
        mid = last // 2
        ids = sorted({i for i in (mid - 1, mid, mid + 1, last) if 0 < i <= last})
    found, _ = _pass(monkeypatch, ids, last)
    assert found == ids


def test_rows_bunched_low_do_not_read_the_upper_range_page_after_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the first range alone fills a page, the rest is read in one range: the
    upper range's page is read once, not once a page."""
    monkeypatch.setattr(audit, "PAGE", 10)
    ids = [*range(1, 501), 900, 901]  # 500 rows low, two high
    found, read = _pass(monkeypatch, ids, 1000)
    assert found == ids
    assert read <= len(ids) + 2 * 10  # one wasted page of the upper range at most
