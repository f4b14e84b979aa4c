"""The console's pages and forms over ASGI, on SQLite and PostgreSQL: what they show for a
store seeded with SQL, and what their forms change. The browser tests drive the same
pages through Chromium; these cover the cases a browser run would make slow.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from crmsync.config import load_settings
from crmsync.store import queue, sync_errors
from crmsync.store.schema import sync_error, sync_pause, sync_queue, sync_throughput
from crmsync.store.status import hour_window
from crmsync.store.types import utcnow
from crmsync.web.app import create_app

PASSWORD = "pages-password"
STATUS = "/admin/microsoft-dynamics/sync-status"
ERRORS = "/admin/microsoft-dynamics/sync-errors"
ZONE = "Asia/Kolkata"  # +05:30: the window and times must follow the half-hour offset


def entry(obj: str, direction: str, key: str, operation: str, minutes_ago: int, **extra: Any):
    at = utcnow() - timedelta(minutes=minutes_ago)
    return {
        "object": obj,
        "direction": direction,
        "record_key": key,
        "record_id": int(key) if key.isdigit() else None,
        "crm_id": extra.pop("crm_id", None),
        "operation": operation,
        "label": extra.pop("label", None),
        "state": extra.pop("state", "pending"),
        "first_queued_at": at,
        "last_changed_at": at,
        "next_attempt_at": at,
        **extra,
    }


def error_row(n: int, **extra: Any) -> dict[str, Any]:
    at = utcnow() - timedelta(minutes=n)
    return {
        "object": "lead",
        "direction": "to_crm",
        "record_key": str(n),
        "record_id": n,
        "crm_id": None,
        "record_label": f"lead{n}@example.com",
        "operation": "insert",
        "error_code": "0x80040333",
        "error_message": "duplicate",
        "first_failed_at": at,
        "last_failed_at": at,
        "attempts": 1,
        "status": "open",
        **extra,
    }


def throughput(start: Any, direction: str, operation: str, synced: int) -> dict[str, Any]:
    return {
        "bucket_start": start,
        "object": "lead",
        "direction": direction,
        "operation": operation,
        "synced": synced,
    }


@pytest.fixture
async def admin(db_url: str, engine: Engine) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    app = create_app(
        load_settings(database_url=db_url, admin_password=PASSWORD, timezone=ZONE), engine=engine
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://console.test"
    ) as c:
        form = await c.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token
        r = await c.post(
            "/login", data={"username": "admin", "password": PASSWORD, "csrf_token": token[1]}
        )
        assert r.status_code == 303
        page = await c.get(STATUS)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token
        yield c, token[1]


def cell(html: str, obj: str, col: str) -> str:
    row = re.search(rf'<tr [^>]*data-object="{obj}".*?</tr>', html, re.S)
    assert row, f"no row for {obj}"
    value = re.search(rf'data-col="{col}">(.*?)</td>', row.group(0), re.S)
    assert value, f"no {col} cell for {obj}"
    return re.sub(r"<[^>]+>", "", value.group(1)).strip()


# -- Sync Status --------------------------------------------------------------------------


async def test_status_page_shows_the_backlog_and_the_last_hour(
    admin: tuple[httpx.AsyncClient, str], engine: Engine
) -> None:
    c, _ = admin
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_queue),
            [
                entry("lead", "to_crm", "1", "insert", 125, label="old@example.com"),
                entry("lead", "to_crm", "2", "insert", 3),
                entry("lead", "from_crm", "3", "update", 10, crm_id="c-3"),
                entry("contact", "to_crm", "4", "delete", 1),
                entry("contact", "to_crm", "5", "insert", 1, state="parked"),  # an error
            ],
        )
        start, _ = hour_window(utcnow(), load_settings(timezone=ZONE).zone)
        conn.execute(
            sa.insert(sync_throughput),
            [
                throughput(start, "to_crm", "insert", 1200),
                throughput(start, "from_crm", "update", 34),
            ],
        )
        # Lead synced lately, both ways, in batches as workers record them: the drain rate.
        for ago in (20, 10, 5):
            counts = {("lead", "to_crm", "update"): 100, ("lead", "from_crm", "update"): 5}
            queue.count_synced(conn, counts, utcnow() - timedelta(seconds=ago))
    html = (await c.get(STATUS)).text
    assert [cell(html, "lead", k) for k in ("inserts", "updates", "deletes", "total")] == [
        "2",
        "1",
        "0",
        "3",
    ]
    assert cell(html, "lead", "age") == "2 h 05 min"
    assert [cell(html, "contact", k) for k in ("inserts", "deletes", "total")] == ["0", "1", "1"]
    assert cell(html, "account", "total") == "0"
    # Lead's 3 waiting at the recent rate (store.drain; the numbers are in its tests):
    # a time. Contact's 1 with nothing synced lately: no rate, no time.
    assert re.fullmatch(r"\d+ (s|min)", cell(html, "lead", "drain"))
    assert cell(html, "contact", "drain") == "\u2014"
    with engine.begin() as conn:
        paused = {"object": "lead", "direction": "from_crm", "paused_at": utcnow()}
        conn.execute(sa.insert(sync_pause).values(**paused))
    assert cell((await c.get(STATUS)).text, "lead", "drain") == "paused"
    with engine.begin() as conn:
        conn.execute(sa.delete(sync_pause))

    html = (await c.get(STATUS, params={"view": "last_hour"})).text
    assert cell(html, "lead", "inserts") == "N/A" and cell(html, "lead", "updates") == "N/A"
    assert cell(html, "lead", "synced") == "1,234"
    assert cell(html, "opportunity", "synced") == "0"
    window = re.search(r'id="window">([^<]+)<', html)
    assert window and re.fullmatch(r"\d\d:00 to \d\d:00", window[1]), window
    assert "Asia/Kolkata" in html
    # The chart has the hour's bar, labelled on the Kolkata clock.
    assert re.search(
        r'<rect class="bar bar-lead"[^>]*><title>\d{4}-\d\d-\d\d \d\d:00 to \d\d:00, Lead: 1,234',
        html,
    )
    # The current hour is the chart's last, partial; the figures are in a table too.
    hours = re.findall(r'<g class="hour( hour-partial)?" data-hour="(\d+)"', html)
    assert len(hours) == 25 and [p for p, _ in hours].count(" hour-partial") == 1
    assert hours[-1][0] == " hour-partial"
    partial_row = re.search(r'<tr class="partial"><th scope="row">([^<]+)</th>', html)
    assert partial_row and partial_row[1].endswith(", so far")
    assert re.search(r'<text class="axis axis-date"[^>]*>\d{4}-\d\d-\d\d</text>', html)

    # Its row's details in this view: the hour's records by operation and direction.
    assert f'data-details-url="{STATUS}/lead?view=last_hour"' in html
    hour_html = (await c.get(f"{STATUS}/lead", params={"view": "last_hour", "partial": "1"})).text
    table = re.search(
        r'<table class="data details-table" id="hour-details">.*?</table>', hour_html, re.S
    )
    assert table, hour_html
    cells = dict(re.findall(r'<tr data-operation="(\w+)">(.*?)</tr>', table[0], re.S))
    assert re.findall(r'data-direction="(\w+)">([^<]+)<', cells["insert"]) == [
        ("to_crm", "1,200"),
        ("from_crm", "0"),
    ]
    assert re.findall(r'data-direction="(\w+)">([^<]+)<', cells["update"]) == [
        ("to_crm", "0"),
        ("from_crm", "34"),
    ]
    assert "1,234 records in all" in hour_html
    api = await c.get("/api/v1/sync/status/lead", params={"view": "last_hour"})
    assert api.status_code == 200
    assert api.json()["by_direction"]["from_crm"]["updates"] == 34 and api.json()["synced"] == 1234
    bad = await c.get("/api/v1/sync/status/lead", params={"view": "weekly"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "view"

    # A bad view falls back to the backlog; the fragment is just the live region.
    assert 'data-col="total"' in (await c.get(STATUS, params={"view": "x"})).text
    fragment = (await c.get(STATUS, params={"partial": "1"})).text
    assert "<html" not in fragment and 'id="status-table"' in fragment


async def test_details_page_and_fragment(
    admin: tuple[httpx.AsyncClient, str], engine: Engine
) -> None:
    c, _ = admin
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_queue),
            [
                entry("lead", "from_crm", "7", "update", 30, crm_id="crm-7", label="seven@x.org"),
                entry("lead", "to_crm", "8", "update", 5, label="eight@x.org"),
            ],
        )
    html = (await c.get(f"{STATUS}/lead")).text
    update = re.search(r'<tr data-operation="update">.*?</tr>', html, re.S)
    assert update
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", update.group(0)))
    assert "2" in text and "seven@x.org" in text and "crm-7" in text and "From Dynamics" in text
    assert "30 min" in text
    assert "<html" in html
    assert "<html" not in (await c.get(f"{STATUS}/lead", params={"partial": "1"})).text
    missing = await c.get(f"{STATUS}/invoice")
    assert missing.status_code == 404 and "unknown object" in missing.text


async def test_pause_and_resume_forms(admin: tuple[httpx.AsyncClient, str], engine: Engine) -> None:
    c, token = admin
    r = await c.post(
        f"{STATUS}/pause",
        data={"object": "lead", "direction": "to_crm", "csrf_token": token, "view": "last_hour"},
    )
    assert r.status_code == 303 and r.headers["location"] == f"{STATUS}?view=last_hour"
    with engine.connect() as conn:
        scopes = queue.paused_scopes(conn)
    assert scopes == {("lead", "to_crm")}
    assert queue.is_paused(scopes, "lead", "to_crm") and not queue.is_paused(
        scopes, "lead", "from_crm"
    )
    html = (await c.get(r.headers["location"])).text
    assert "Paused: Lead, to Dynamics." in html and "Sync paused" in html
    status = (await c.get("/api/v1/sync/status")).json()
    assert [(p["object"], p["direction"]) for p in status["paused"]] == [("lead", "to_crm")]

    r = await c.post(f"{STATUS}/pause", data={"object": "invoice", "csrf_token": token})
    html = (await c.get(r.headers["location"])).text
    assert "Nothing paused: object unknown value &#39;invoice&#39;" in html

    r = await c.post(f"{STATUS}/resume", data={"csrf_token": token})
    html = (await c.get(r.headers["location"])).text
    assert "Resumed: All objects, both directions." in html and "Sync paused" not in html
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_pause)).scalar() == 0


# -- Sync Errors ----------------------------------------------------------------------------


def row_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-error-id="(\d+)"', html)]


async def test_errors_page_pages_filters_and_links(
    admin: tuple[httpx.AsyncClient, str], engine: Engine
) -> None:
    c, _ = admin
    with engine.begin() as conn:
        conn.execute(sa.insert(sync_error), [error_row(n) for n in range(1, 61)])
        conn.execute(
            sa.insert(sync_error),
            [error_row(100, object="contact", error_code="0x80040220", record_label="c@x.org")],
        )
    html = (await c.get(ERRORS)).text
    first_page = row_ids(html)
    assert len(first_page) == 50 and "Showing 1\u201350 of 61" in html
    assert re.search(r"0x80040333</code></a></th><td class=\"num\">60<", html)  # summary
    nxt = re.search(r'href="([^"]+)" rel="next"', html)
    assert nxt
    html = (await c.get(nxt[1].replace("&amp;", "&"))).text
    second_page = row_ids(html)
    assert len(second_page) == 11 and not set(first_page) & set(second_page)
    assert "Showing 51\u201361 of 61" in html and "Page 2 of 2" in html
    assert 'rel="next"' not in html
    # Back: the previous page is the first one again, rows and label alike.
    prev = re.search(r'href="([^"]+)" rel="prev"', html)
    assert prev
    html = (await c.get(prev[1].replace("&amp;", "&"))).text
    assert row_ids(html) == first_page and "Showing 1\u201350 of 61" in html

    # 25 a page: the third page's previous is the second, found from the cursor alone.
    html = (await c.get(ERRORS, params={"limit": "25"})).text
    assert len(row_ids(html)) == 25 and "Page 1 of 3" in html
    pages = [row_ids(html)]
    for _ in range(2):
        nxt = re.search(r'href="([^"]+)" rel="next"', html)
        assert nxt
        html = (await c.get(nxt[1].replace("&amp;", "&"))).text
        pages.append(row_ids(html))
    assert [len(p) for p in pages] == [25, 25, 11] and "Showing 51\u201361 of 61" in html
    assert "Page 3 of 3" in html and 'id="first-page"' in html
    prev = re.search(r'href="([^"]+)" rel="prev"', html)
    assert prev and "limit=25" in prev[1]
    html = (await c.get(prev[1].replace("&amp;", "&"))).text
    assert row_ids(html) == pages[1] and "Showing 26\u201350 of 61" in html
    # A page number in the URL is not the page: the label follows the rows shown.
    html = (await c.get(ERRORS, params={"page": "99999999"})).text
    assert row_ids(html) == first_page and "Showing 1\u201350 of 61" in html
    for bad in ("30", "x", "1000"):
        r = await c.get(ERRORS, params={"limit": bad})
        assert r.status_code == 422 and "Rows per page must be one of 25, 50, 100, 200" in r.text

    html = (await c.get(ERRORS, params={"object": "contact"})).text
    assert len(row_ids(html)) == 1 and "c@x.org" in html
    export = re.search(r'href="([^"]+)" download id="export-csv"', html)
    assert export
    link = export[1].replace("&amp;", "&")
    assert parse_qs(urlparse(link).query) == {"object": ["contact"], "format": ["csv"]}
    csv_text = (await c.get(link)).text
    assert csv_text.splitlines()[1].split(",")[1] == "contact"

    # since/until come from datetime-local inputs: times on the console's clock.
    at = utcnow() - timedelta(minutes=30, seconds=30)
    local = at.astimezone(load_settings(timezone=ZONE).zone).strftime("%Y-%m-%dT%H:%M")
    html = (await c.get(ERRORS, params={"since": local})).text
    since_utc = at.replace(second=0, microsecond=0)  # the form has minutes only
    with engine.connect() as conn:
        recent = conn.execute(
            sa.select(sync_error.c.id)
            .where(sync_error.c.last_failed_at >= since_utc)
            .order_by(sync_error.c.last_failed_at.desc())
        ).scalars()
        expected = list(recent)
    assert row_ids(html) == expected and 29 <= len(expected) <= 31
    export = re.search(r'href="([^"]+)" download id="export-csv"', html)
    assert export
    since = parse_qs(urlparse(export[1].replace("&amp;", "&")).query)["since"][0]
    assert since.endswith("+00:00") and since[11:16] == at.strftime("%H:%M")


async def test_bad_filters_and_cursors_are_explained_not_500(
    admin: tuple[httpx.AsyncClient, str], engine: Engine
) -> None:
    c, _ = admin
    with engine.begin() as conn:
        conn.execute(sa.insert(sync_error), [error_row(1)])
    # A filter that cannot be applied lists nothing and arms no bulk action; the form
    # keeps what was typed and marks the field.
    for params, field, message in (
        ({"object": "invoice"}, "object", "Unknown value"),
        ({"since": "yesterday"}, "since", "Is not a date and time"),
        ({"status": "gone"}, "status", "Unknown value"),
        ({"q": "x" * 1001}, "q", "Is longer than 1000"),
        (
            {"since": "2026-11-25 10:00", "until": "2026-11-24 10:00"},
            "until",
            "Is earlier than Failed since",
        ),
    ):
        r = await c.get(ERRORS, params=params)
        assert r.status_code == 422, params
        assert row_ids(r.text) == [] and "Retry all" not in r.text, params
        assert "Dismiss all" not in r.text and 'id="export-csv"' not in r.text, params
        assert "Filter not applied, so no errors are listed" in r.text, params
        marked = re.search(rf'<[^>]+name="{field}"[^>]*>', r.text)
        assert marked and f'aria-invalid="true" aria-describedby="problem-{field}"' in marked[0]
        problem = re.search(rf'id="problem-{field}">([^<]+)<', r.text)
        assert problem and problem[1].startswith(message), (params, problem)
        for name, value in params.items():
            if name in ("since", "until", "q"):
                assert f'value="{value}"' in r.text, name
            else:
                assert f'<option value="{value}" selected>{value} (not known)' in r.text
    # Two bad fields: both marked.
    r = await c.get(ERRORS, params={"since": "yesterday", "until": "soon", "object": "lead"})
    assert 'id="problem-since"' in r.text and 'id="problem-until"' in r.text
    assert '<option value="lead" selected>' in r.text
    # A stale cursor is not a filter: the first page, said so.
    r = await c.get(ERRORS, params={"cursor": "garbage"})
    assert r.status_code == 422 and "cursor: is not a cursor" in r.text
    assert len(row_ids(r.text)) == 1
    for page in ("\u00b2", "9" * 5000, "-1", "0"):
        r = await c.get(ERRORS, params={"page": page})
        assert r.status_code == 200 and len(row_ids(r.text)) == 1


async def test_retry_and_dismiss_forms(
    admin: tuple[httpx.AsyncClient, str], engine: Engine
) -> None:
    c, token = admin
    with engine.begin() as conn:
        conn.execute(sa.insert(sync_error), [error_row(n) for n in (1, 2, 3)])
        conn.execute(
            sa.insert(sync_error), [error_row(4, object="contact", error_code="0x80040220")]
        )
        conn.execute(
            sa.insert(sync_queue),
            [entry("lead", "to_crm", str(n), "insert", 60, state="parked") for n in (1, 2, 3)]
            + [entry("contact", "to_crm", "4", "insert", 60, state="parked")],
        )
    with engine.connect() as conn:
        ids = dict(conn.execute(sa.select(sync_error.c.record_key, sync_error.c.id)).all())

    def states() -> dict[str, str]:
        with engine.connect() as conn:
            return dict(conn.execute(sa.select(sync_queue.c.record_key, sync_queue.c.state)).all())

    async def post(action: str, **data: Any) -> str:
        r = await c.post(f"{ERRORS}/{action}", data={"csrf_token": token, **data})
        assert r.status_code == 303
        return (await c.get(r.headers["location"])).text

    html = await post("retry", one=str(ids["1"]), ids=[str(ids["2"])])  # the row's own button
    assert "Retried 1 error: 1 record queued to sync again." in html
    assert states() == {"1": "pending", "2": "parked", "3": "parked", "4": "parked"}

    html = await post("retry", ids=[str(ids["2"]), str(ids["3"])], scope="selected")
    assert "Retried 2 errors: 2 records queued to sync again." in html
    html = await post("retry", scope="selected")
    assert "Select one or more errors first." in html
    for bad in ("\u00b2", "9" * 5000, "-1", "<b>"):
        html = await post("retry", ids=[bad], scope="selected")
        assert "Nothing done: ids:" in html and "is not an error id" in html
    html = await post("retry", ids=["999999"], scope="selected")
    assert "Nothing done: no sync error with id 999999" in html

    # The whole filter: object=contact only.
    html = await post("retry", scope="filter", object="contact")
    assert "Retried 1 error: 1 record queued to sync again." in html and states()["4"] == "pending"
    html = await post("dismiss", scope="filter", object="lead")
    assert "Dismissed 3 errors." in html
    with engine.connect() as conn:
        status = dict(conn.execute(sa.select(sync_error.c.record_key, sync_error.c.status)).all())
    assert status == {"1": "dismissed", "2": "dismissed", "3": "dismissed", "4": "open"}
    assert 'value="object"' not in html  # redirected back with the filter kept
    html = await post("dismiss", one=str(ids["4"]))
    assert "Dismissed 1 error." in html and "No errors match." in html


async def test_bulk_dismiss_api(admin: tuple[httpx.AsyncClient, str], engine: Engine) -> None:
    c, token = admin
    headers = {"X-CSRF-Token": token}
    with engine.begin() as conn:
        conn.execute(sa.insert(sync_error), [error_row(n) for n in (1, 2, 3)])
        conn.execute(sa.insert(sync_error), [error_row(4, status="resolved")])
    with engine.connect() as conn:
        ids = sorted(conn.execute(sa.select(sync_error.c.id)).scalars())
    r = await c.post("/api/v1/sync/errors/dismiss", json={"ids": ids[:1]}, headers=headers)
    assert r.status_code == 200 and r.json() == {"errors": 1, "dismissed": 1}
    r = await c.post("/api/v1/sync/errors/dismiss", json={"ids": [ids[0], 10**6]}, headers=headers)
    assert r.status_code == 404 and "1000000" in r.json()["error"]["message"]
    r = await c.post(
        "/api/v1/sync/errors/dismiss", json={"ids": [ids[1]], "object": "lead"}, headers=headers
    )
    assert r.status_code == 422
    r = await c.post("/api/v1/sync/errors/dismiss", json={"object": "invoice"}, headers=headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "object"
    r = await c.post("/api/v1/sync/errors/dismiss", json={"object": "lead"}, headers=headers)
    assert r.json() == {"errors": 2, "dismissed": 2}  # open ones only; resolved stays resolved
    with engine.connect() as conn:
        statuses = sorted(conn.execute(sa.select(sync_error.c.status)).scalars())
    assert statuses == ["dismissed", "dismissed", "dismissed", "resolved"]


async def test_an_error_about_a_whole_object_reads_as_such(
    admin: tuple[httpx.AsyncClient, str], engine: Engine
) -> None:
    c, _ = admin
    message = "Principal user (Id=1) is missing prvReadContact privilege <b>"
    with engine.begin() as conn:
        queue.fail_object(conn, "contact", "from_crm", "0x80040220", message, utcnow())
        conn.execute(sa.insert(sync_error), [error_row(1)])
    html = (await c.get(ERRORS, params={"direction": "from_crm"})).text
    [row] = re.findall(r'<tr data-error-id="\d+">.*?</tr>', html, re.S)
    assert "Contact: every record" in row and "the whole table" in row
    assert "local id" not in row and "0x80040220" in row
    assert "missing prvReadContact privilege &lt;b&gt;" in row
    csv_text = (await c.get("/api/v1/sync/errors/export", params={"direction": "from_crm"})).text
    assert csv_text.splitlines()[1].split(",")[1:5] == ["contact", "", "", ""]


async def test_unknown_pages_are_console_pages_and_there_is_an_icon(
    admin: tuple[httpx.AsyncClient, str],
) -> None:
    c, _ = admin
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    for path in ("/admin/microsoft-dynamics/nowhere", "/nope", "/admin/x/<script>"):
        r = await c.get(path, headers=html)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        assert '<h1 id="not-found-title">Page not found</h1>' in r.text
        assert 'class="topbar"' in r.text and "Log out" in r.text  # the console's layout
        assert "<script>" not in r.text.split("<main", 1)[1]  # the path is escaped
        assert "default-src 'self'" in r.headers["content-security-policy"]
    # Machines keep the JSON shape: the API, a client that does not ask for HTML, a POST.
    for method, path, headers in (
        ("GET", "/api/v1/nowhere", html),
        ("GET", "/admin/nowhere", {"Accept": "application/json"}),
        ("GET", "/healthz/x", html),
    ):
        r = await c.request(method, path, headers=headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
    icon = await c.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert (await c.get("/static/favicon.svg")).status_code == 200


async def test_date_boxes_and_cursors_out_of_range_are_marked_not_500(
    admin: tuple[httpx.AsyncClient, str], engine: Engine
) -> None:
    c, _ = admin
    with engine.begin() as conn:
        conn.execute(sa.insert(sync_error), [error_row(1)])
    # On the console's clock (+05:30) year 1's first minute is before year 1 in UTC, and
    # 9999-12-31 23:59 at -23:00 is after year 9999: astimezone overflows on both.
    for field, value in (
        ("since", "0001-01-01 00:00"),
        ("since", "9999-12-31T23:59-23:00"),
        ("until", "0001-01-01T00:00+14:00"),
        ("until", "9999-12-31 23:59"),
    ):
        r = await c.get(ERRORS, params={field: value})
        assert r.status_code == 422, (field, value)
        assert row_ids(r.text) == [] and "Dismiss all" not in r.text
        problem = re.search(rf'id="problem-{field}">([^<]+)<', r.text)
        assert problem and problem[1].startswith("Is out of range"), (field, value, problem)
        assert f'value="{value}"' in r.text
    # A hand-edited cursor holding such a time is a stale cursor: the first page.
    from datetime import datetime as dt

    from crmsync.store.params import encode_cursor

    for at in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:00-23:00"):
        cursor = encode_cursor("e1:", dt.fromisoformat(at), 1)
        r = await c.get(ERRORS, params={"cursor": cursor})
        assert r.status_code == 422 and "cursor: is not a cursor" in r.text, at
        assert row_ids(r.text) == [1]


async def test_page_label_when_rows_leave_the_list_between_loads(
    admin: tuple[httpx.AsyncClient, str], engine: Engine
) -> None:
    c, _ = admin
    with engine.begin() as conn:
        conn.execute(sa.insert(sync_error), [error_row(n) for n in range(1, 61)])
    html = (await c.get(ERRORS, params={"limit": "25"})).text
    assert "Page 1 of 3" in html
    nxt = re.search(r'href="([^"]+)" rel="next"', html)
    assert nxt
    with engine.begin() as conn:  # 10 errors of page 1 resolve meanwhile
        conn.execute(sa.update(sync_error).where(sync_error.c.id <= 10).values(status="resolved"))
    html = (await c.get(nxt[1].replace("&amp;", "&"))).text
    # 15 open rows are before the cursor, 35 from it on: a second page of 25 then one of 10.
    assert row_ids(html) == list(range(26, 51))
    assert "Showing 16\u201340 of 50" in html
    label = re.search(r'id="page-of">([^<]+)<', html)
    assert label and label[1] == "Page 2 of 3", label
    assert 'rel="prev"' in html and 'rel="next"' in html


async def test_the_next_automatic_retry_is_shown_on_errors_the_record_page_and_the_api(
    admin: tuple[httpx.AsyncClient, str], engine: Engine
) -> None:
    c, _ = admin
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO lead (id, email) VALUES (7, 'lead7@example.com')"))
        conn.execute(sa.delete(sync_error))
    when = utcnow().replace(microsecond=0) + timedelta(hours=2)
    with engine.begin() as conn:
        conn.execute(sa.delete(sync_queue))  # the insert's capture: not this test's
        conn.execute(
            sa.insert(sync_error),
            [
                error_row(7, category="unavailable", retry_at=when),
                error_row(8, category="duplicate", retry_at=None),
            ],
        )
    shown = when.astimezone(ZoneInfo(ZONE)).strftime("%Y-%m-%d %H:%M:%S")
    html = (await c.get(ERRORS)).text
    rows = dict(re.findall(r'<tr data-error-id="(\d+)">(.*?)</tr>', html, re.S))
    ids = sorted(rows, key=int)
    retried, waiting = rows[ids[0]], rows[ids[1]]
    assert f'<span class="ids retry-at">retried automatically {shown}</span>' in retried
    assert f"<dt>Next retry</dt><dd>{shown} ({ZONE}), automatically</dd>" in retried
    assert "retry-at" not in waiting and "Next retry" not in waiting
    page = (await c.get("/admin/microsoft-dynamics/records/lead/7")).text
    assert f'<span class="retry-at">retried automatically {shown}</span>' in page
    with engine.connect() as conn:
        listed = sync_errors.list_errors(conn, sync_errors.make_filters(["lead"]))["items"]
    assert [(i["record_id"], i["retry_at"]) for i in listed] == [
        (7, when.isoformat()),
        (8, None),
    ]
