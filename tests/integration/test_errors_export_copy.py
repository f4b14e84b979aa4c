"""The PostgreSQL CSV export (server ``COPY``) is byte for byte the Python-formatted one.

Both paths export the same adversarial rows (formula characters, quotes, commas, line
breaks, odd Unicode, nulls, negative numbers, zero and non-zero fractions of a second,
every status) under many filters, the search included, and must agree exactly.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from itertools import cycle
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from crmsync.domain import STANDARD_OBJECTS
from crmsync.store import errors_copy, sync_errors
from crmsync.store.db import create_store_engine
from crmsync.store.schema import sync_error
from crmsync.store.sync_errors import ERROR_FIELDS, make_filters

pytestmark = pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """Sessions in a zone far from UTC (+05:45), so that a time written in the session's
    zone rather than UTC shows."""
    eng = create_store_engine(db_url, connect_args={"options": "-c timezone=Asia/Kathmandu"})
    yield eng
    eng.dispose()


NASTY = [
    "=1+1",
    '=HYPERLINK("http://evil.example","click")',
    "+41 22",
    "-negative",
    "@SUM(A1)",
    "\tindented",
    "\rreturn first",
    "line\nbreak",
    "crlf\r\ninside",
    "lone\rcr",
    "\n",
    "a,b,c",
    'say "hi"',
    '"',
    "",
    " leading space",
    "trailing space ",
    "'already quoted",
    "\\.",
    "\\N",
    "NULL",
    "Élodie@Example.com",
    "日本語のラベル",
    "emoji 🎉 and ZWJ 👩‍👩‍👧",
    "\u202eright-to-left",
    "line\u2028separator",
    "x" * 300,
    "%_\\ wildcards",
    "o'; DROP TABLE sync_error; --",
]
TIMES = [
    datetime(2026, 11, 25, 9, 0, tzinfo=UTC),  # no fraction: isoformat omits it
    datetime(2026, 11, 25, 9, 0, 1, 120000, tzinfo=UTC),  # trailing zeros kept
    datetime(2026, 11, 25, 9, 0, 2, 1, tzinfo=UTC),
    datetime(2026, 3, 29, 2, 30, 0, 999999, tzinfo=timezone(timedelta(hours=5, minutes=45))),
    datetime(5, 1, 1, 0, 0, tzinfo=UTC),  # a four-digit, zero-padded year
]
STATUSES = ("open", "resolved", "dismissed")


def nasty_rows() -> list[dict[str, Any]]:
    rows = []
    texts = cycle(NASTY)
    for i, text in enumerate(NASTY * 2):
        failed = TIMES[i % len(TIMES)]
        rows.append(
            {
                "object": STANDARD_OBJECTS[i % len(STANDARD_OBJECTS)],
                "direction": ("to_crm", "from_crm")[i % 2],
                "record_key": str(i),
                "record_id": (None, -i, i, 2**62)[i % 4],
                "crm_id": None if i % 3 == 0 else next(texts)[:36],
                "record_label": None if i % 5 == 0 else text[:300],
                "operation": ("insert", "update", "delete")[i % 3],
                "error_code": next(texts)[:64],
                "error_message": text,
                "first_failed_at": failed - timedelta(minutes=i),
                "last_failed_at": failed,
                "attempts": (1, 0, -2, 2**31 - 1)[i % 4],
                "status": STATUSES[i % 3],
                # The automatic retry's time, a third column of times (or none).
                "retry_at": None if i % 2 else TIMES[(i + 1) % len(TIMES)],
            }
        )
    return rows


def insert(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(sync_error))
        if rows:
            conn.execute(sa.insert(sync_error), rows)


def count(conn: sa.Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(sync_error)).scalar_one())


def both(engine: Engine, **chosen: Any) -> tuple[str, str]:
    filters = make_filters(STANDARD_OBJECTS, **chosen)
    copied = "".join(sync_errors.export(engine, filters, "csv"))
    portable = "".join(sync_errors.portable_csv(engine, filters))
    return copied, portable


FILTERS: list[dict[str, Any]] = [
    {},
    {"status": "all"},
    *({"status": s} for s in STATUSES),
    {"status": "all", "object": STANDARD_OBJECTS[1]},
    {"status": "all", "direction": "from_crm", "operation": "update"},
    {"status": "all", "code": "=1+1"},
    {"status": "all", "since": "2026-01-01T00:00:00Z", "until": "2026-11-25T09:00:01.5Z"},
    *(
        {"status": "all", "q": q}
        for q in ("=", "%", "_", "\\", "'", '"', ",", "é", "ÉLODIE", "日本", "🎉", "drop table")
    ),
    {"status": "all", "q": "nothing matches this"},
]


def test_copy_export_is_byte_identical_to_the_python_export(engine):
    insert(engine, nasty_rows())
    for chosen in FILTERS:  # one database for all: creating one per case costs seconds
        copied, portable = both(engine, **chosen)
        assert copied == portable, chosen
        rows = list(csv.reader(io.StringIO(copied, newline="")))
        assert rows[0] == list(ERROR_FIELDS)
        with engine.connect() as conn:
            total = sync_errors.list_errors(conn, make_filters(STANDARD_OBJECTS, **chosen))["total"]
        assert len(rows) - 1 == total, chosen
        assert total > 0 or chosen.get("q") == "nothing matches this", chosen


def test_copy_export_cells(engine):
    """Spot checks of the COPY output itself, so that the two paths cannot agree on a
    wrong answer."""
    insert(engine, nasty_rows())
    filters = make_filters(STANDARD_OBJECTS, status="all")
    text = "".join(errors_copy.copy_csv(engine, sync_errors.copy_query(filters)))
    assert text.startswith(",".join(ERROR_FIELDS) + "\r\n") and text.endswith("\r\n")
    parsed = list(csv.reader(io.StringIO(text, newline="")))[1:]
    rows = [dict(zip(ERROR_FIELDS, r, strict=True)) for r in parsed]
    by_message = {r["error_message"]: r for r in rows}
    assert "'=1+1" in by_message and "'\rreturn first" in by_message
    assert by_message["crlf\r\ninside"]["error_message"] == "crlf\r\ninside"
    assert by_message["'@SUM(A1)"]["record_label"] == "'@SUM(A1)"
    times = {r["last_failed_at"] for r in rows}
    assert times == {
        "2026-11-25T09:00:00+00:00",
        "2026-11-25T09:00:01.120000+00:00",
        "2026-11-25T09:00:02.000001+00:00",
        "2026-03-28T20:45:00.999999+00:00",
        "0005-01-01T00:00:00+00:00",
    }
    assert {r["retry_at"] for r in rows} == times | {""}  # no automatic retry: empty
    assert {r["attempts"] for r in rows} == {"1", "0", "'-2", str(2**31 - 1)}
    assert "'-1" in {r["record_id"] for r in rows}
    assert '\r\n"",' not in text  # an empty string is an empty field, not ""


def test_injection_attempt_is_a_search_not_sql(engine):
    insert(engine, nasty_rows())
    copied, _ = both(engine, status="all", q="o'; DROP TABLE sync_error; --")
    assert len(copied.split("\r\n")) > 2  # header, matches, trailing empty
    with engine.connect() as conn:
        assert count(conn) == 2 * len(NASTY)


def test_stopping_early_leaves_a_clean_connection(engine):
    """A client that goes away mid-download closes the generator inside the COPY: the
    copy is abandoned and the pooled connection is usable, in its own time zone."""
    big = [dict(r, error_message=r["error_message"] + "y" * 2000) for r in nasty_rows()]
    insert(engine, big * 10)
    with engine.connect() as conn:
        zone = conn.execute(sa.text("SHOW TIME ZONE")).scalar()
    assert zone == "Asia/Kathmandu"
    chunks = sync_errors.export(engine, make_filters(STANDARD_OBJECTS, status="all"), "csv")
    first = next(chunks)
    assert first.startswith("id,") and len(first.encode()) >= errors_copy.CHUNK_BYTES
    chunks.close()  # type: ignore[attr-defined]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SHOW TIME ZONE")).scalar() == zone
        assert count(conn) == 20 * len(NASTY)
    copied, portable = both(engine, status="all")
    assert copied == portable


def test_a_failing_copy_raises_the_store_error_family(engine, db_url):
    rows = [dict(r, error_message=r["error_message"] + "y" * 2000) for r in nasty_rows()]
    insert(engine, rows * 40)  # sorting 2,000+ wide rows takes well over a millisecond
    slow = create_store_engine(db_url, connect_args={"options": "-c statement_timeout=1"})
    with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
        "".join(sync_errors.export(slow, make_filters(STANDARD_OBJECTS, status="all"), "csv"))
    slow.dispose()


# PostgreSQL text holds any character but NUL (and no lone surrogates).
cell = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"], exclude_characters="\0"), max_size=40
)
formula = st.sampled_from("=+-@\t\r").flatmap(lambda c: cell.map(lambda s: c + s))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(cell | formula, cell | formula, st.none() | cell), max_size=6))
def test_copy_export_matches_on_arbitrary_text(engine, cells):
    rows = nasty_rows()[: len(cells)]
    for row, (message, code, label) in zip(rows, cells, strict=True):
        row.update(error_message=message, error_code=code[:64], record_label=label)
    insert(engine, rows)
    copied, portable = both(engine, status="all")
    assert copied == portable
