"""The conflict journal over the API, on SQLite and PostgreSQL: filters, newest first,
keyset paging while rows are added, and refusal of bad input. Rows are inserted as the
pull engine would write them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from crmsync.config import load_settings
from crmsync.store.conflicts import CONFLICT_FIELDS
from crmsync.store.schema import sync_conflict
from crmsync.web.app import create_app

TOKEN = "conflicts-token"
URL = "/api/v1/sync/conflicts"


def t(hhmm: str) -> datetime:
    return datetime.fromisoformat(f"2026-11-25T{hhmm}:00+00:00")


def conflict(
    obj: str, record_id: int | None, field: str, detected: str, winner: str = "crm"
) -> dict[str, Any]:
    return {
        "object": obj,
        "record_id": record_id,
        "crm_id": f"00000000-0000-0000-0000-{record_id or 0:012d}",
        "field": field,
        "local_value": f"local {field}",
        "crm_value": f"crm {field}",
        "winner": winner,
        "rule": "crm_wins" if winner == "crm" else "local_wins",
        "detected_at": t(detected),
    }


CONFLICTS = [  # ids 1..6
    conflict("lead", 1, "email", "10:00"),
    conflict("lead", 1, "last_name", "10:00", winner="local"),
    conflict("lead", 2, "email", "11:00"),
    conflict("contact", 1, "email", "12:00"),
    conflict("account", None, "name", "09:00"),
    conflict("lead", 3, "first_name", "13:00"),
]


@pytest.fixture
async def client(db_url: str, engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    with engine.begin() as conn:
        conn.execute(sa.insert(sync_conflict), CONFLICTS)
    app = create_app(load_settings(database_url=db_url, api_token=TOKEN), engine=engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as c:
        yield c


async def ids(client: httpx.AsyncClient, **params: Any) -> list[int]:
    response = await client.get(URL, params=params)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def test_newest_first_with_the_contract_fields(client):
    body = (await client.get(URL)).json()
    assert [i["id"] for i in body["items"]] == [6, 4, 3, 2, 1, 5]  # 2 and 1 tie: higher id first
    assert body["next_cursor"] is None
    assert list(body["items"][-2]) == list(CONFLICT_FIELDS)
    assert body["items"][-2] == {
        "id": 1,
        "object": "lead",
        "record_id": 1,
        "crm_id": "00000000-0000-0000-0000-000000000001",
        "field": "email",
        "local_value": "local email",
        "crm_value": "crm email",
        "winner": "crm",
        "rule": "crm_wins",
        "detected_at": "2026-11-25T10:00:00+00:00",
    }


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"object": "lead"}, [6, 3, 2, 1]),
        ({"object": "lead", "record_id": 1}, [2, 1]),
        ({"record_id": 1}, [4, 2, 1]),
        ({"field": "email"}, [4, 3, 1]),
        ({"field": "EMAIL"}, []),  # the column name, exactly
        ({"since": "2026-11-25T11:00:00Z"}, [6, 4, 3]),
        ({"until": "2026-11-25T11:00:00Z"}, [2, 1, 5]),
        ({"since": "2026-11-25T15:00:00+05:00", "until": "2026-11-25T12:30:00Z"}, [4, 3, 2, 1]),
        ({"object": "opportunity"}, []),
        ({"field": "'; DROP TABLE sync_conflict;--"}, []),
        ({"field": "émoji 🎉\u200b"}, []),
    ],
)
async def test_filters(client, params, expected):
    assert await ids(client, **params) == expected


async def test_paging_without_gaps_or_repeats_while_rows_are_added(client, engine):
    seen: list[int] = []
    cursor = None
    added = False
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = (await client.get(URL, params=params)).json()
        seen += [i["id"] for i in body["items"]]
        if not added:  # newer rows, and one at the same instant as the page's last row
            with engine.begin() as conn:
                conn.execute(
                    sa.insert(sync_conflict),
                    [
                        conflict("lead", 9, "email", "14:00"),
                        conflict("lead", 9, "company", "12:00"),
                    ],
                )
            added = True
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [6, 4, 3, 2, 1, 5]
    assert await ids(client) == [7, 6, 8, 4, 3, 2, 1, 5]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"object": "invoice"}, "object"),
        ({"record_id": 0}, "record_id"),
        ({"record_id": "x"}, "record_id"),
        ({"record_id": 2**63}, "record_id"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-11-25T10:00:00"}, "until"),  # no offset
        ({"since": "2026-11-25T12:00:00Z", "until": "2026-11-25T10:00:00Z"}, "until"),
        ({"field": "a\x00b"}, "field"),
        ({"field": "x" * 65}, "field"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"cursor": "nope"}, "cursor"),
        ({"cursor": "ZTE6MjAyNi0xMS0yNVQxMDowMDowMCswMDowMHwx"}, "cursor"),  # an errors cursor
    ],
)
async def test_bad_input_is_422_naming_the_parameter(client, params, field):
    response = await client.get(URL, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


async def test_needs_credentials(client):
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        response = await client.get(URL, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
