"""The history the store writes with each change, on SQLite and PostgreSQL: a transient
failure retried, a send rolled back, retries and dismissals by each kind of user,
resync, the history API's paging and checks, and pruning that keeps the latest events.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from typer.testing import CliRunner

from crmsync.cli import app as cli
from crmsync.config import load_settings
from crmsync.store import capture, finish, history, queue
from crmsync.store.db import read_transaction, write_transaction
from crmsync.store.schema import sync_error, sync_event, sync_queue
from crmsync.store.types import utcnow
from crmsync.web.app import create_app

LEASE = timedelta(seconds=30)
TOKEN = "history-token"
PASSWORD = "correct horse battery staple"
ERRORS = "/admin/microsoft-dynamics/sync-errors"


def add_lead(engine: Engine, email: str = "h@example.com") -> int:
    with write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO lead (email, last_name) VALUES (:e, 'L')"), {"e": email})
        return int(conn.execute(sa.text("SELECT max(id) FROM lead")).scalar_one())


def kinds(engine: Engine, record_id: int, obj: str = "lead") -> list[tuple[Any, ...]]:
    with read_transaction(engine) as conn:
        items = history.timeline(conn, obj, record_id, None, limit=1000)["items"]
    return [(e["event"], e["direction"], e["operation"]) for e in items[::-1]]


def events(engine: Engine, record_id: int) -> list[dict[str, Any]]:
    with read_transaction(engine) as conn:
        return list(history.timeline(conn, "lead", record_id, None, limit=1000)["items"][::-1])


def sent(entry: queue.Entry, **outcome: Any) -> queue.Outcome:
    return queue.Outcome(sent=[(entry, ("email", "last_name"))], batch="b1", **outcome)


def test_a_transient_failure_retried(engine: Engine) -> None:
    lead = add_lead(engine)
    (entry,) = queue.claim(engine, "w", "to_crm", ["lead"], 10, LEASE)
    retry_at = utcnow() - timedelta(seconds=1)  # due again at once
    failure = queue.Failed(entry, "503", "Service Unavailable", retry_at=retry_at)
    queue.record(engine, sent(entry, failed=[failure]))
    (again,) = queue.claim(engine, "w", "to_crm", ["lead"], 10, LEASE)
    queue.record(engine, sent(again, done=[queue.Done(again, crm_id="g-1")]))
    assert kinds(engine, lead) == [
        ("captured", "to_crm", "insert"),
        ("sent", "to_crm", "insert"),
        ("failed", "to_crm", "insert"),
        ("retry_scheduled", "to_crm", "insert"),
        ("sent", "to_crm", "insert"),
        ("synced", "to_crm", "insert"),
    ]
    found = events(engine, lead)
    assert found[1]["detail"] == {"batch": "b1", "size": 1}
    assert found[1]["fields"] == ["email", "last_name"]
    assert (found[2]["error_code"], found[2]["error_message"]) == ("503", "Service Unavailable")
    assert found[2]["detail"] == {"attempt": 1}
    assert found[3]["detail"] == {"when": retry_at.isoformat()}


def test_captured_names_the_columns_that_differ_from_the_last_sync(engine: Engine) -> None:
    """The fold compares the record with its synced values: a run of writes names its net
    change, a write that restores the synced values names none; a delete, none."""
    lead = add_lead(engine)  # email and last_name
    (entry,) = queue.claim(engine, "w", "to_crm", ["lead"], 10, LEASE)
    synced = {"email": "h@example.com", "first_name": None, "last_name": "L", "company": None}
    queue.record(engine, sent(entry, done=[queue.Done(entry, crm_id="g-1", synced_values=synced)]))

    def write(statement: str) -> None:
        with write_transaction(engine) as conn:
            conn.execute(sa.text(statement), {"i": lead})

    def fold() -> None:
        with write_transaction(engine) as conn:
            capture.fold(conn)

    write("UPDATE lead SET company = 'Acme' WHERE id = :i")
    write("UPDATE lead SET first_name = 'Ada', company = 'Acme2' WHERE id = :i")
    fold()
    write("UPDATE lead SET first_name = NULL, company = NULL WHERE id = :i")
    fold()
    write("DELETE FROM lead WHERE id = :i")
    fold()
    found = events(engine, lead)
    assert [(e["event"], e["operation"], e["fields"], e["detail"]) for e in found] == [
        ("captured", "insert", ["email", "last_name"], None),
        ("sent", "insert", ["email", "last_name"], {"batch": "b1", "size": 1}),
        ("synced", "insert", None, None),
        ("captured", "update", ["company", "first_name"], {"writes": 2}),
        ("captured", "update", None, None),  # back to the synced values
        ("captured", "delete", None, None),
    ]


def test_a_send_refused_as_stale_is_in_the_outcomes_transaction(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """412 while the pull runs: ``failed`` then ``retry_scheduled`` (when, after the
    pull), written with the outcome that defers the entry; rolled back with it too."""
    lead = add_lead(engine)
    (entry,) = queue.claim(engine, "w", "to_crm", ["lead"], 10, LEASE)
    again = utcnow() + timedelta(seconds=2)
    refused = sent(entry, deferred=[(entry, again)], stale=[(entry, again)])

    def killed(*args: Any) -> None:
        raise KeyboardInterrupt("worker killed")

    monkeypatch.setattr(history, "write", killed)
    with pytest.raises(KeyboardInterrupt):
        queue.record(engine, refused)
    monkeypatch.undo()
    with engine.connect() as conn:
        due = conn.execute(sa.select(sync_queue.c.next_attempt_at)).scalar_one()
    assert due != again  # the deferral rolled back with its events
    queue.record(engine, refused)
    assert kinds(engine, lead) == [
        ("captured", "to_crm", "insert"),
        ("sent", "to_crm", "insert"),
        ("failed", "to_crm", "insert"),
        ("retry_scheduled", "to_crm", "insert"),
    ]
    failed, scheduled = events(engine, lead)[2:]
    assert (failed["error_code"], failed["detail"]) == ("http_412", {"status": 412, "stale": True})
    assert scheduled["detail"] == {"after": "pull", "when": again.isoformat()}
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_error)).scalar() == 0
        assert conn.execute(sa.select(sync_queue.c.next_attempt_at)).scalar_one() == again


def test_a_send_rolled_back_leaves_no_event(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed mid-batch: the outcome's transaction never commits, so no event
    claims the send; the entry is claimed again and its send recorded once."""
    lead = add_lead(engine)
    (entry,) = queue.claim(engine, "w", "to_crm", ["lead"], 10, LEASE)

    def killed(*args: Any) -> None:
        raise KeyboardInterrupt("worker killed")

    monkeypatch.setattr(finish, "count_synced", killed)
    monkeypatch.setattr(finish, "finish_postgresql", killed)
    with pytest.raises(KeyboardInterrupt):
        queue.record(engine, sent(entry, done=[queue.Done(entry, crm_id="g-1")]))
    monkeypatch.undo()
    assert kinds(engine, lead) == [("captured", "to_crm", "insert")]
    later = utcnow() + LEASE + timedelta(seconds=1)
    (again,) = queue.claim(engine, "w2", "to_crm", ["lead"], 10, LEASE, now=later)
    queue.record(engine, sent(again, done=[queue.Done(again, crm_id="g-1")]))
    assert kinds(engine, lead) == [
        ("captured", "to_crm", "insert"),
        ("sent", "to_crm", "insert"),
        ("synced", "to_crm", "insert"),
    ]


def park(engine: Engine) -> tuple[int, int]:
    """A lead whose insert was refused: (its id, its error's id)."""
    lead = add_lead(engine)
    claimed = queue.claim(engine, "w", "to_crm", ["lead"], 10, LEASE)
    (entry,) = [e for e in claimed if e.record_id == lead]
    queue.release(engine, "w", [e.id for e in claimed if e is not entry])
    queue.record(engine, sent(entry, failed=[queue.Failed(entry, "0x80044331", "too long")]))
    with engine.connect() as conn:
        error_id = conn.execute(
            sa.select(sync_error.c.id).where(sync_error.c.record_id == lead)
        ).scalar_one()
    return lead, int(error_id)


REFUSED = [
    ("captured", "to_crm", "insert"),
    ("sent", "to_crm", "insert"),
    ("failed", "to_crm", "insert"),
    ("parked", "to_crm", "insert"),
]


@pytest.fixture
async def api(db_url: str, engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    settings = load_settings(database_url=db_url, api_token=TOKEN, admin_password=PASSWORD)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings, engine=engine)),
        base_url="http://test",
    ) as c:
        yield c


async def console_login(c: httpx.AsyncClient) -> str:
    form = await c.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token
    r = await c.post(
        "/login", data={"username": "admin", "password": PASSWORD, "csrf_token": token[1]}
    )
    assert r.status_code == 303
    page = await c.get(ERRORS)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found
    return found[1]


def cli_run(db_url: str, *args: str) -> None:
    result = CliRunner().invoke(cli, list(args), env={"CRMSYNC_DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output


async def test_retry_and_dismiss_by_each_kind_of_user(
    api: httpx.AsyncClient, engine: Engine, db_url: str
) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    # API token
    lead, error_id = park(engine)
    r = await api.post(f"/api/v1/sync/errors/{error_id}/retry", headers=bearer)
    assert r.status_code == 200, r.text
    r = await api.post(f"/api/v1/sync/errors/{error_id}/dismiss", headers=bearer)
    assert r.status_code == 200, r.text
    # CLI
    lead2, error2 = park(engine)
    cli_run(db_url, "errors", "retry", "--id", str(error2))
    cli_run(db_url, "errors", "dismiss", "--id", str(error2))
    # Console user (session and CSRF token, the form the Sync Errors page posts)
    lead3, error3 = park(engine)
    csrf = await console_login(api)
    for action in ("retry", "dismiss"):
        r = await api.post(f"{ERRORS}/{action}", data={"csrf_token": csrf, "one": str(error3)})
        assert r.status_code == 303, r.text
    for record, who in ((lead, "api:CRMSYNC_API_TOKEN"), (lead2, "cli"), (lead3, "console:admin")):
        assert kinds(engine, record) == [
            *REFUSED,
            ("retried", "to_crm", "insert"),
            ("dismissed", "to_crm", "insert"),
        ], who
        retried, dismissed = events(engine, record)[-2:]
        assert retried["detail"] == {"by": who}
        assert dismissed["detail"] == {"by": who}
        assert dismissed["error_code"] == "0x80044331"


async def test_history_api_pages_newest_first_and_checks_its_input(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    lead, _ = park(engine)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        r = await api.get(f"/api/v1/records/lead/{lead}/history", params=params, headers=bearer)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body["items"][0]) == {
            "at", "event", "direction", "operation", "fields", "error_code",
            "error_message", "detail",
        }  # fmt: skip
        seen += [e["event"] for e in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ["parked", "failed", "sent", "captured"]
    for path, status in (
        (f"/api/v1/records/nope/{lead}/history", 404),
        (f"/api/v1/records/lead/{lead + 100}/history", 404),
        (f"/api/v1/records/lead/{lead}/history?cursor=bogus", 422),
        (f"/api/v1/records/lead/{lead}/history?limit=0", 422),
        (f"/api/v1/records/lead/{lead}/history?limit=1001", 422),
    ):
        r = await api.get(path, headers=bearer)
        assert r.status_code == status, (path, r.text)
        assert "error" in r.json()
    r = await api.get(f"/api/v1/records/lead/{lead}/history")
    assert r.status_code == 401


async def test_resync_to_dynamics_queues_the_record_with_an_event(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    lead, _ = park(engine)
    r = await api.post(
        f"/api/v1/records/lead/{lead}/resync", json={"direction": "to_crm"}, headers=bearer
    )
    assert r.status_code == 200, r.text
    assert r.json()["direction"] == "to_crm"
    # Queued again through the capture log, as every resync is: the fold makes it due.
    capture.fold_pending(engine)
    with engine.connect() as conn:
        state = conn.execute(
            sa.select(sync_queue.c.state, sync_queue.c.attempts).where(
                sync_queue.c.record_key == str(lead)
            )
        ).one()
    assert tuple(state) == ("pending", 0)  # the parked entry is due again
    assert kinds(engine, lead)[-2:] == [
        ("resynced", "to_crm", None),
        ("captured", "to_crm", "insert"),
    ]
    assert events(engine, lead)[-2]["detail"] == {"by": "api:CRMSYNC_API_TOKEN"}
    for body, status in (({"direction": "sideways"}, 422), ({}, 422)):
        r = await api.post(f"/api/v1/records/lead/{lead}/resync", json=body, headers=bearer)
        assert r.status_code == status, r.text
    # Accounts only come from Dynamics.
    with write_transaction(engine) as conn:
        conn.execute(sa.text("INSERT INTO account (name) VALUES ('A')"))
        account = conn.execute(sa.text("SELECT max(id) FROM account")).scalar_one()
    r = await api.post(
        f"/api/v1/records/account/{account}/resync", json={"direction": "to_crm"}, headers=bearer
    )
    assert r.status_code == 422 and "does not sync to Dynamics" in r.text


async def test_compare_says_why_when_dynamics_is_unreachable(db_url: str, engine: Engine) -> None:
    import socket

    # Bound, never listening: connections are refused, and no other process can take
    # the port meanwhile (as one could a port found free and let go).
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{held.getsockname()[1]}"
    settings = load_settings(
        database_url=db_url,
        api_token=TOKEN,
        dynamics_url=dead,
        authority_url=dead,
        tenant_id="t",
        client_id="c",
        client_secret="s",
    )
    lead = add_lead(engine)
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("UPDATE lead SET crm_id = :c WHERE id = :i"),
            {"c": "00000000-0000-0000-0000-000000000001", "i": lead},
        )
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings, engine=engine)),
        base_url="http://test",
        headers=bearer,
    ) as c:
        r = await c.get(f"/api/v1/records/lead/{lead}/compare")
        assert r.status_code == 502, r.text
        assert r.json()["error"]["message"].startswith("Dynamics could not be read")
        assert "Traceback" not in r.text
        r = await c.get(f"/api/v1/records/lead/{lead + 1}/compare")
        assert r.status_code == 404
    unconfigured = load_settings(database_url=db_url, api_token=TOKEN)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(unconfigured, engine=engine)),
        base_url="http://test",
        headers=bearer,
    ) as c:
        r = await c.get(f"/api/v1/records/lead/{lead}/compare")
        assert r.status_code == 503 and "not configured" in r.json()["error"]["message"]
    held.close()


async def test_search_finds_records_by_email_name_and_ids(
    api: httpx.AsyncClient, engine: Engine
) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    lead = add_lead(engine, "Grace.Hopper@example.com")
    with write_transaction(engine) as conn:
        conn.execute(
            sa.text("INSERT INTO account (name, crm_id) VALUES ('Navy 100%', :c)"),
            {"c": "aaaaaaaa-0000-0000-0000-000000000001"},
        )
    for q, expected in (
        ("grace.hop", [("lead", lead)]),
        # A local id is each object's own: every object's record with it.
        (str(lead), [("lead", lead), *([("account", 1)] if lead == 1 else [])]),
        ("AAAAAAAA-0000-0000-0000-000000000001", [("account", 1)]),
        ("navy 100%", [("account", 1)]),
        ("navy 1000", []),
        ("%", []),
    ):
        r = await api.get("/api/v1/search/records", params={"q": q}, headers=bearer)
        assert r.status_code == 200, r.text
        found = [(i["object"], i["id"]) for i in r.json()["items"]]
        assert [f for f in found if f[0] in ("lead", "account")] == expected, q
    for params in ({"q": " "}, {"q": "a", "limit": 51}, {}):
        r = await api.get("/api/v1/search/records", params=params, headers=bearer)
        assert r.status_code == 422, (params, r.text)


def test_pruning_keeps_each_records_latest_events(engine: Engine) -> None:
    now = utcnow()
    old = now - timedelta(days=40)
    rows = [
        history.event("lead", key, history.EventKind.SYNCED, old + timedelta(seconds=i))
        for key, n in (("1", 25), ("2", 3))
        for i in range(n)
    ]
    rows.append(history.event("lead", "1", history.EventKind.CAPTURED, now))
    with write_transaction(engine) as conn:
        history.write(conn, rows)
    assert history.prune(engine, now) == 25 - (history.KEEP_PER_RECORD - 1)
    with engine.connect() as conn:
        left = dict(
            conn.execute(
                sa.select(sync_event.c.record_key, sa.func.count()).group_by(
                    sync_event.c.record_key
                )
            ).all()
        )
    # Record 1 keeps its fresh event and the newest old ones up to KEEP_PER_RECORD;
    # record 2 keeps all three (fewer than KEEP_PER_RECORD), however old.
    assert left == {"1": history.KEEP_PER_RECORD, "2": 3}
    assert history.prune(engine, now) == 0


def test_history_off_writes_no_events(engine: Engine) -> None:
    history.configure(enabled=False)
    try:
        lead = add_lead(engine)
        (entry,) = queue.claim(engine, "w", "to_crm", ["lead"], 10, LEASE)
        queue.record(engine, sent(entry, done=[queue.Done(entry, crm_id="g-1")]))
    finally:
        history.configure()
    assert kinds(engine, lead) == []
