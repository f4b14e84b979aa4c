"""Sync Errors over the API, on SQLite and PostgreSQL: filters, search, paging, export,
retry and dismiss. Errors are seeded with SQL at known times."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine

from crmsync import diagnosis
from crmsync.config import load_settings
from crmsync.store import queue
from crmsync.store.schema import sync_error, sync_queue
from crmsync.store.sync_errors import ERROR_FIELDS, FORMULA_STARTS, csv_lines, escape_cell
from crmsync.web.app import create_app

TOKEN = "errors-token"


def t(hhmm: str) -> datetime:
    return datetime.fromisoformat(f"2026-11-25T{hhmm}:00+00:00")


def error(
    obj: str,
    direction: str,
    key: str,
    label: str | None,
    operation: str,
    code: str,
    message: str,
    failed: str,
    status: str = "open",
    record_id: int | None = None,
    crm_id: str | None = None,
    field: str | None = None,
) -> dict[str, Any]:
    return {
        "field": field,
        "category": diagnosis.category_of(code, message),
        "object": obj,
        "direction": direction,
        "record_key": key,
        "record_id": record_id,
        "crm_id": crm_id,
        "record_label": label,
        "operation": operation,
        "error_code": code,
        "error_message": message,
        "first_failed_at": t(failed) - timedelta(minutes=5),
        "last_failed_at": t(failed),
        "attempts": 2,
        "status": status,
    }


ERRORS = [  # ids 1..6 in this order
    error(
        "lead",
        "to_crm",
        "1",
        "ada@example.com",
        "insert",
        "0x80040333",
        "A record with matching email already exists",
        "10:00",
        record_id=1,
    ),
    error(
        "lead",
        "to_crm",
        "2",
        "Élodie@Example.com",
        "update",
        "0x80040237",
        "Business process error: 100% done_ok",
        "11:00",
        record_id=2,
    ),
    error(
        "contact",
        "from_crm",
        "cccc",
        "bob@example.com",
        "update",
        "local_constraint",
        '=HYPERLINK("http://evil.example","click")',
        "12:00",
        crm_id="cccc-1111",
    ),
    error(
        "lead",
        "from_crm",
        "dddd",
        "-negative",
        "delete",
        "0x80040333",
        "Robert'); DROP TABLE sync_error;--",
        "12:00",
        crm_id="dddd",
    ),
    error(
        "account",
        "from_crm",
        "eeee",
        "Contoso",
        "update",
        "0x80040216",
        "resolved thing",
        "09:00",
        status="resolved",
        crm_id="eeee",
    ),
    error(
        "lead",
        "to_crm",
        "6",
        "dis@example.com",
        "insert",
        "0x80040333",
        "dismissed",
        "13:00",
        status="dismissed",
        record_id=6,
    ),
]


def parked(obj: str, direction: str, key: str, operation: str, **extra: Any) -> dict[str, Any]:
    return {
        "object": obj,
        "direction": direction,
        "record_key": key,
        "operation": operation,
        "state": "parked",
        "attempts": 3,
        "record_id": None,
        "crm_id": None,
        "label": None,
        "first_queued_at": t("09:00"),
        "last_changed_at": t("09:00"),
        "next_attempt_at": t("09:00"),
        **extra,
    }


def seed(engine: Engine) -> None:
    with engine.begin() as conn:
        for row in ERRORS:
            conn.execute(sa.insert(sync_error).values(**row))
        conn.execute(
            sa.insert(sync_queue),
            [
                parked("lead", "to_crm", "1", "insert", record_id=1, label="ada@example.com"),
                parked("contact", "from_crm", "cccc", "update", crm_id="cccc-1111"),
            ],
        )


@pytest.fixture
async def client(db_url: str, engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    seed(engine)
    app = create_app(load_settings(database_url=db_url, api_token=TOKEN), engine=engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as c:
        yield c


async def ids(client: httpx.AsyncClient, **params: Any) -> list[int]:
    response = await client.get("/api/v1/sync/errors", params=params)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


# -- listing and filters ------------------------------------------------------------------


async def test_list_is_newest_first_with_total_and_contract_fields(client):
    body = (await client.get("/api/v1/sync/errors")).json()
    assert [i["id"] for i in body["items"]] == [4, 3, 2, 1]  # 4 and 3 tie: higher id first
    assert body["total"] == 4 and body["next_cursor"] is None
    assert list(body["items"][3]) == list(ERROR_FIELDS)
    assert body["items"][3] == {
        "id": 1,
        "object": "lead",
        "record_id": 1,
        "crm_id": None,
        "record_label": "ada@example.com",
        "operation": "insert",
        "direction": "to_crm",
        "error_code": "0x80040333",
        "error_message": "A record with matching email already exists",
        "first_failed_at": "2026-11-25T09:55:00+00:00",
        "last_failed_at": "2026-11-25T10:00:00+00:00",
        "attempts": 2,
        "status": "open",
        "field": None,
        "category": "duplicate",
        "fix": diagnosis.fix_for("duplicate", "0x80040333"),
        "retry_at": None,
    }


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "all"}, [6, 4, 3, 2, 1, 5]),
        ({"status": "resolved"}, [5]),
        ({"status": "dismissed"}, [6]),
        ({"object": "lead"}, [4, 2, 1]),
        ({"direction": "to_crm"}, [2, 1]),
        ({"operation": "update"}, [3, 2]),
        ({"code": "0x80040333"}, [4, 1]),
        ({"code": "0x80040333", "status": "all"}, [6, 4, 1]),
        ({"since": "2026-11-25T11:00:00Z"}, [4, 3, 2]),
        ({"until": "2026-11-25T12:00:00+00:00"}, [2, 1]),
        ({"since": "2026-11-25T16:30:00+05:30"}, [4, 3, 2]),  # 11:00Z
        ({"object": "opportunity"}, []),
    ],
)
async def test_filters(client, params, expected):
    assert await ids(client, **params) == expected


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("EXAMPLE.COM", [3, 2, 1]),  # label, case-insensitive
        ("already EXISTS", [1]),  # message
        ("LOCAL_constraint", [3]),  # code
        ("0x80040237", [2]),
        ("cccc-1111", [3]),  # crm id
        ("dddd", [4]),  # record key
        ("100%", [2]),  # % is literal
        ("%", [2]),
        ("_", [4, 3, 2]),  # _ is literal: sync_error, local_constraint, done_ok
        ("'); DROP TABLE sync_error;--", [4]),
        ("' OR '1'='1", []),
        ("\\", []),
        ("Élodie", [2]),
        ("😀", []),
        ("‮", []),  # right-to-left override
        ("", [4, 3, 2, 1]),  # empty: no search
    ],
)
async def test_search(client, engine, q, expected):
    assert await ids(client, q=q) == expected
    with engine.connect() as conn:  # the injection did nothing
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_error)).scalar() == 6


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "closed"}, "status"),
        ({"object": "invoice"}, "object"),
        ({"direction": "up"}, "direction"),
        ({"operation": "upsert"}, "operation"),
        ({"since": "noon"}, "since"),
        ({"until": "2026-11-25T12:00:00"}, "until"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "ZTE6eHx5"}, "cursor"),
        # Hand-edited cursors holding a time at datetime's limits (overflow on binding)
        ({"cursor": "ZTE6MDAwMS0wMS0wMVQwMDowMDowMCsxNDowMHwx"}, "cursor"),
        ({"cursor": "ZTE6OTk5OS0xMi0zMVQyMzo1OTowMC0yMzowMHwx"}, "cursor"),
        ({"since": "0001-01-01T00:00+14:00"}, "since"),
        ({"until": "9999-12-31T23:59-23:00"}, "until"),
        ({"since": "1899-12-31T23:59Z"}, "since"),
        ({"q": "a\x00b"}, "q"),
        ({"q": "x" * 1001}, "q"),
        ({"category": "too_long"}, "category"),
        ({"field": "x" * 65}, "field"),
    ],
)
async def test_bad_parameters_are_422(client, params, field):
    for url in ("/api/v1/sync/errors", "/api/v1/sync/errors/summary"):
        if url.endswith("summary") and field in ("limit", "cursor"):
            continue
        response = await client.get(url, params=params)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field


async def test_paging_has_no_gaps_or_repeats_while_rows_are_added(client, engine):
    base = t("08:00")
    with engine.begin() as conn:
        conn.execute(sa.delete(sync_error))
        conn.execute(
            sa.insert(sync_error),
            [
                {
                    **error(
                        "lead",
                        "to_crm",
                        str(100 + i),
                        f"p{i}@example.com",
                        "insert",
                        "E",
                        "paging",
                        "08:00",
                    ),
                    # Groups of three share a timestamp: the id breaks the tie.
                    "last_failed_at": base + timedelta(minutes=i // 3),
                }
                for i in range(25)
            ],
        )
        original = set(conn.execute(sa.select(sync_error.c.id)).scalars())
    seen: list[int] = []
    cursor = None
    added = 0
    while True:
        params: dict[str, Any] = {"limit": 7}
        if cursor:
            params["cursor"] = cursor
        body = (await client.get("/api/v1/sync/errors", params=params)).json()
        seen += [i["id"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        with engine.begin() as conn:  # newer failures arrive between pages
            added += 1
            conn.execute(
                sa.insert(sync_error).values(
                    **error("lead", "to_crm", f"new{added}", None, "insert", "E", "new", "14:00")
                )
            )
            # ... and one at the same time as rows already paged past
            conn.execute(
                sa.insert(sync_error).values(
                    **{
                        **error(
                            "lead", "to_crm", f"tie{added}", None, "insert", "E", "tie", "08:00"
                        ),
                        "last_failed_at": base + timedelta(minutes=8),
                    }
                )
            )
    assert len(seen) == len(set(seen)) == 25
    assert set(seen) == original
    assert added == 3
    body = (await client.get("/api/v1/sync/errors", params={"limit": 1})).json()
    assert body["total"] == 25 + 2 * added


async def test_summary(client):
    body = (await client.get("/api/v1/sync/errors/summary")).json()
    assert body["total"] == 4
    assert body["by_object"] == {"lead": 3, "contact": 1}
    assert body["by_direction"] == {"to_crm": 2, "from_crm": 2}
    assert body["by_code"] == {"0x80040333": 2, "0x80040237": 1, "local_constraint": 1}
    assert body["by_category"] == {"duplicate": 3, "other": 1}
    assert body["by_field"] == {}
    body = (await client.get("/api/v1/sync/errors/summary", params={"status": "all"})).json()
    assert body["total"] == 6 and body["by_code"]["0x80040333"] == 3


async def test_category_filter_on_list_summary_and_export(client):
    assert await ids(client, category="duplicate") == [4, 2, 1]
    assert await ids(client, category="permission") == []
    body = await client.get("/api/v1/sync/errors/summary", params={"category": "duplicate"})
    assert body.json()["total"] == 3 and body.json()["by_category"] == {"duplicate": 3}
    response = await client.get("/api/v1/sync/errors/export", params={"category": "duplicate"})
    header = response.text.split("\r\n", 1)[0].split(",")
    v1 = ["id", "object", "record_id", "crm_id", "record_label", "operation", "direction",
          "error_code", "error_message", "first_failed_at", "last_failed_at", "attempts",
          "status"]  # fmt: skip
    assert header == [*v1, "field", "category", "fix", "retry_at"]
    rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
    assert {r["category"] for r in rows} == {"duplicate"} and all(r["fix"] for r in rows)
    exported = await client.get(
        "/api/v1/sync/errors/export", params={"category": "duplicate", "format": "json"}
    )
    assert [list(item)[-4:] for item in exported.json()] == [
        ["field", "category", "fix", "retry_at"]
    ] * 3


# -- export -------------------------------------------------------------------------------


async def test_csv_export(client):
    response = await client.get("/api/v1/sync/errors/export", params={"status": "all"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == 'attachment; filename="sync-errors.csv"'
    assert response.text.startswith(",".join(ERROR_FIELDS) + "\r\n")
    rows = list(csv.DictReader(io.StringIO(response.text, newline="")))
    assert [int(r["id"]) for r in rows] == [6, 4, 3, 2, 1, 5]
    by_id = {int(r["id"]): r for r in rows}
    assert by_id[3]["error_message"] == '\'=HYPERLINK("http://evil.example","click")'
    assert by_id[4]["record_label"] == "'-negative"
    assert by_id[3]["record_id"] == ""  # null
    assert by_id[2]["record_label"] == "Élodie@Example.com"
    filtered = await client.get("/api/v1/sync/errors/export", params={"object": "contact"})
    assert len(filtered.text.strip().split("\r\n")) == 2


async def test_json_export_matches_the_list(client):
    response = await client.get(
        "/api/v1/sync/errors/export", params={"format": "json", "status": "all"}
    )
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="sync-errors.json"'
    listed = (await client.get("/api/v1/sync/errors", params={"status": "all"})).json()
    assert json.loads(response.text) == listed["items"]
    empty = await client.get(
        "/api/v1/sync/errors/export", params={"format": "json", "object": "opportunity"}
    )
    assert json.loads(empty.text) == []


async def test_export_bad_parameters(client):
    for params, field in (({"format": "xlsx"}, "format"), ({"status": "x"}, "status")):
        response = await client.get("/api/v1/sync/errors/export", params=params)
        assert response.status_code == 422 and response.json()["error"]["field"] == field


cell_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20
) | st.sampled_from(FORMULA_STARTS).flatmap(lambda c: st.text(max_size=10).map(lambda s: c + s))


@given(st.lists(st.fixed_dictionaries({name: cell_text for name in ERROR_FIELDS}), max_size=5))
def test_csv_escapes_formulas_and_parses_back(items):
    text = "".join(csv_lines(items))
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == list(ERROR_FIELDS)
    assert len(rows) == len(items) + 1
    for item, row in zip(items, rows[1:], strict=True):
        for name, cell in zip(ERROR_FIELDS, row, strict=True):
            original = item[name]
            if original.startswith(FORMULA_STARTS):
                assert cell == "'" + original
                cell = cell[1:]
            else:
                assert not cell.startswith(FORMULA_STARTS)
            assert cell == original


def test_escape_cell():
    assert escape_cell(None) == ""
    assert escape_cell(12) == "12"
    assert escape_cell("@SUM(A1)") == "'@SUM(A1)"
    assert escape_cell("a=b") == "a=b"


# -- retry and dismiss -------------------------------------------------------------------------


def entry_state(engine: Engine, key: str) -> tuple[str, int]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(sync_queue.c.state, sync_queue.c.attempts).where(
                sync_queue.c.record_key == key
            )
        ).one()
    return row.state, row.attempts


async def test_retry_one_puts_the_entry_back_and_sync_resolves_the_error(client, engine):
    response = await client.post("/api/v1/sync/errors/1/retry")
    assert response.status_code == 200, response.text
    assert response.json() == {"errors": 1, "requeued": 1}
    assert entry_state(engine, "1") == ("pending", 0)
    assert entry_state(engine, "cccc") == ("parked", 3)
    assert 1 in await ids(client)  # still open until it syncs
    lead = (await client.get("/api/v1/sync/status")).json()["objects"][0]
    assert (lead["object"], lead["inserts"]) == ("lead", 1)
    claimed = queue.claim(engine, "w1", "to_crm", ["lead"], 10, timedelta(seconds=30))
    assert [e.record_key for e in claimed] == ["1"]
    queue.record(engine, queue.Outcome(done=[queue.Done(entry=claimed[0], crm_id="x")]))
    assert await ids(client, status="resolved") == [1, 5]
    # Again: nothing parked any more.
    assert (await client.post("/api/v1/sync/errors/1/retry")).json() == {
        "errors": 1,
        "requeued": 0,
    }


async def test_retry_by_ids_and_by_filters(client, engine):
    r = await client.post("/api/v1/sync/errors/retry", json={"object": "contact"})
    assert r.json() == {"errors": 1, "requeued": 1}
    assert entry_state(engine, "cccc") == ("pending", 0)
    assert entry_state(engine, "1") == ("parked", 3)
    r = await client.post("/api/v1/sync/errors/retry", json={"ids": [1, 3, 1]})
    assert r.json() == {"errors": 2, "requeued": 1}
    assert entry_state(engine, "1") == ("pending", 0)


async def test_retry_all_open(client, engine):
    r = await client.post("/api/v1/sync/errors/retry")
    assert r.json() == {"errors": 4, "requeued": 2}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"ids": [999]}, 404, None),
        ({"ids": [1], "object": "lead"}, 422, "ids"),
        ({"ids": [0]}, 422, "ids"),
        ({"ids": "1"}, 422, "ids"),
        ({"object": "invoice"}, 422, "object"),
        ({"status": "gone"}, 422, "status"),
        ({"color": "red"}, 422, "color"),
    ],
)
async def test_bad_retries(client, body, status, field):
    r = await client.post("/api/v1/sync/errors/retry", json=body)
    assert r.status_code == status, r.text
    if field:
        assert r.json()["error"]["field"] == field


async def test_dismiss(client):
    r = await client.post("/api/v1/sync/errors/2/dismiss")
    assert r.status_code == 200 and r.json()["status"] == "dismissed"
    assert await ids(client) == [4, 3, 1]
    assert await ids(client, status="dismissed") == [6, 2]
    assert 2 in await ids(client, status="all")
    assert (await client.post("/api/v1/sync/errors/999/dismiss")).status_code == 404
    assert (await client.post("/api/v1/sync/errors/abc/dismiss")).status_code == 422
    assert (await client.post("/api/v1/sync/errors/99999999999999999999/retry")).status_code == 422


async def test_errors_need_credentials(client):
    no = {"Authorization": ""}
    assert (await client.get("/api/v1/sync/errors", headers=no)).status_code == 401
    assert (await client.get("/api/v1/sync/errors/export", headers=no)).status_code == 401
    assert (await client.post("/api/v1/sync/errors/1/retry", headers=no)).status_code == 401
    assert (await client.post("/api/v1/sync/errors/1/dismiss", headers=no)).status_code == 401


async def test_an_edited_cursor_out_of_range_reads_as_not_a_cursor(client):
    from crmsync.store.params import encode_cursor

    for at in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:00-23:00", "0001-01-01T00:00Z"):
        cursor = encode_cursor("e1:", datetime.fromisoformat(at), 1)
        response = await client.get("/api/v1/sync/errors", params={"cursor": cursor})
        assert response.status_code == 422, (at, response.text)
        assert response.json()["error"]["field"] == "cursor"
        assert "is not a cursor" in response.json()["error"]["message"]
