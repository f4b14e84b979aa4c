"""A choice whose options the mapping does not declare keeps Dynamics' labels locally.

``lead.rating`` maps the emulator's ``leadqualitycode`` (1 Hot, 2 Warm, 3 Cold) without
``choices``: each worker reads the options from the emulator's metadata at start, sends
a label as its option value and brings an option back as its label. An option added
while the worker runs is read again and used (the reads rate-limited); a local value
that is no option and a label renamed in Dynamics end as a sync error naming the field;
``crmsync serve`` checks a label against the options a worker stored. Nothing is sent
wrong or lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from pull_support import Sales, count

from crmsync.config import Settings, load_settings
from crmsync.dynamics.client import DataverseClient
from crmsync.emulator import model as emulator_model
from crmsync.engine.worker import Worker
from crmsync.mapping import activate, default_objects
from crmsync.store import migrate, status
from crmsync.store.db import write_transaction
from crmsync.store.schema import sync_choice_option, sync_error, sync_queue

RATING = {"attribute": "leadqualitycode", "type": "choice", "labels": True}


@pytest.fixture
def labels_settings(sync_settings: Settings) -> Iterator[Settings]:
    settings = load_settings(
        **{**sync_settings.model_dump(), "objects": {"lead": {"fields": {"rating": RATING}}}}
    )
    yield settings
    activate(default_objects())


@pytest.fixture
def labels_store(labels_settings: Settings, store: sa.Engine) -> sa.Engine:
    migrate.upgrade(store, labels_settings.object_specs().values())
    return store


@pytest.fixture
def quality() -> Iterator[Any]:
    """``quality(options)``: give the emulator's leadqualitycode other options (the
    real ones come back at the test's end)."""
    leads = emulator_model.ENTITIES["leads"]
    real = leads.attributes["leadqualitycode"]

    def change(options: tuple[tuple[int, str], ...]) -> None:
        leads.attributes["leadqualitycode"] = dataclasses.replace(real, options=options)

    yield change
    leads.attributes["leadqualitycode"] = real


def _sql(engine: sa.Engine, statement: str, **params: Any) -> None:
    with write_transaction(engine) as conn:
        conn.execute(sa.text(statement), params)


def _ratings(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(tuple(r) for r in conn.execute(sa.text("SELECT email, rating FROM lead")))


def _errors(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(
                    sync_error.c.id,
                    sync_error.c.direction,
                    sync_error.c.record_id,
                    sync_error.c.error_code,
                    sync_error.c.field,
                    sync_error.c.error_message,
                    sync_error.c.status,
                ).order_by(sync_error.c.id)
            ).all()
        )


def _crm(url: str) -> dict[str, Any]:
    sales = Sales(url)
    try:
        rows = sales.http.get("leads?$select=emailaddress1,leadqualitycode").json()["value"]
    finally:
        sales.close()
    return {r["emailaddress1"]: (r["leadid"], r["leadqualitycode"]) for r in rows}


def test_labels_go_as_their_options_and_options_come_back_as_labels(
    labels_settings: Settings,
    labels_store: sa.Engine,
    drain: Any,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    columns = {c["name"]: c["type"] for c in sa.inspect(labels_store).get_columns("lead")}
    assert "VARCHAR" in str(columns["rating"]).upper() or "CHAR" in str(columns["rating"])
    _sql(
        labels_store, "INSERT INTO lead (email, last_name, rating) VALUES ('w@x.org', 'W', 'Warm')"
    )
    _sql(labels_store, "INSERT INTO lead (email, last_name) VALUES ('n@x.org', 'N')")
    with caplog.at_level(logging.INFO, logger="crmsync.engine.choices"):
        drain(labels_settings, labels_store)
    read = [r for r in caplog.records if getattr(r, "event", "") == "mapping.choice_options"]
    assert [(r.object, r.field, r.options) for r in read] == [("lead", "rating", 3)]  # type: ignore[attr-defined]
    assert _errors(labels_store) == [] and count(labels_store, sync_queue) == 0
    url = labels_settings.dynamics_url or ""
    crm = _crm(url)
    assert crm["w@x.org"][1] == 2 and crm["n@x.org"][1] is None

    sales = Sales(url)
    try:
        sales.update("leads", crm["w@x.org"][0], {"leadqualitycode": 3})
        sales.update("leads", crm["n@x.org"][0], {"leadqualitycode": 1})
    finally:
        sales.close()
    drain(labels_settings, labels_store)
    assert _ratings(labels_store) == {"w@x.org": "Cold", "n@x.org": "Hot"}
    # What was applied was not captured to go back.
    assert count(labels_store, sync_queue) == 0 and _errors(labels_store) == []
    # An audit run by the command reads the options too: a label is its option.
    audit = _cli(labels_settings, tmp_path, "audit", "--object", "lead", "--json")
    assert audit.returncode == 0, audit.stderr
    [lead] = json.loads(audit.stdout)["objects"]
    assert (lead["checked"], lead["different"], lead["only_local"]) == (2, 0, 0), lead


def test_a_local_value_that_is_no_option_is_a_sync_error_naming_the_field(
    labels_settings: Settings, labels_store: sa.Engine, drain: Any, tmp_path: Path
) -> None:
    for email, rating in (("a@x.org", "Lukewarm"), ("b@x.org", "hot"), ("c@x.org", "Hot")):
        _sql(
            labels_store,
            "INSERT INTO lead (email, last_name, rating) VALUES (:e, 'X', :r)",
            e=email,
            r=rating,
        )
    # A dry run plans with the options Dynamics has, as the push will.
    plan = _cli(labels_settings, tmp_path, "worker", "--once", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.count("is not one of leadqualitycode's options") == 2, plan.stdout
    assert "3 waiting change(s) planned" in plan.stdout
    drain(labels_settings, labels_store)
    errors = _errors(labels_store)
    assert [(e.error_code, e.field, e.status) for e in errors] == [
        ("crmsync.invalid_value", "rating", "open")
    ] * 2
    assert "rating: 'Lukewarm' is not one of leadqualitycode's options in Dynamics " in (
        errors[0].error_message
    )
    assert "(1 'Hot', 2 'Warm', 3 'Cold')" in errors[0].error_message
    assert "'hot' is not one of" in errors[1].error_message  # labels match exactly
    # Only the good one went, as option 1; the others were not sent at all.
    assert {e: v for e, (_, v) in _crm(labels_settings.dynamics_url or "").items()} == {
        "c@x.org": 1
    }
    # Corrected, it goes.
    _sql(labels_store, "UPDATE lead SET rating = 'Warm' WHERE email = 'a@x.org'")
    drain(labels_settings, labels_store)
    assert _crm(labels_settings.dynamics_url or "")["a@x.org"][1] == 2


async def _until(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


def _metadata_reads(url: str) -> int:
    log = httpx.get(f"{url}/_emulator/requests", timeout=10).json()["requests"]
    return sum("PicklistAttributeMetadata" in r["path"] for r in log)


def _stored(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                sync_choice_option.c.object,
                sync_choice_option.c.field,
                sync_choice_option.c.value,
                sync_choice_option.c.label,
            ).order_by(sync_choice_option.c.value)
        )
        return [tuple(r) for r in rows]


def test_an_option_added_while_the_worker_runs_is_read_again_without_a_restart(
    labels_settings: Settings, labels_store: sa.Engine, quality: Any
) -> None:
    """An option Dynamics sends that the worker lacks, and a label pushed that is none of
    its options, make it read the options again (at most once a minute per table); a
    label still unknown after that stays a sync error naming the field."""
    url = labels_settings.dynamics_url or ""
    settings = labels_settings.model_copy(update={"poll_seconds": 0.2})
    sales = Sales(url)

    async def run() -> None:
        async with DataverseClient.from_settings(settings) as client:
            worker = Worker(labels_store, client, settings, concurrency=1)
            task = asyncio.create_task(worker.run())
            try:
                await _until(lambda: worker.puller.specs["lead"].field_specs["rating"].options_read)
                assert worker.options is not None
                worker.options.reread_seconds = 0.0  # each test step may read again
                assert await asyncio.to_thread(_stored, labels_store) == [
                    ("lead", "rating", 1, "Hot"),
                    ("lead", "rating", 2, "Warm"),
                    ("lead", "rating", 3, "Cold"),
                ]
                quality(((1, "Hot"), (2, "Warm"), (3, "Cold"), (4, "Frozen")))
                # Pulled: option 4 arrives labelled.
                await asyncio.to_thread(
                    sales.create,
                    "leads",
                    {"emailaddress1": "f@x.org", "lastname": "F", "leadqualitycode": 4},
                )
                await _until(lambda: _ratings(labels_store).get("f@x.org") == "Frozen")
                assert (4, "Frozen") in [r[2:] for r in _stored(labels_store)]
                # Pushed: a label Dynamics added since goes as its option.
                quality(((1, "Hot"), (2, "Warm"), (3, "Cold"), (4, "Frozen"), (5, "Icy")))
                _sql(
                    labels_store,
                    "INSERT INTO lead (email, last_name, rating) VALUES ('i@x.org', 'I', 'Icy')",
                )
                await _until(lambda: _crm(url).get("i@x.org", (None, None))[1] == 5)
                # A label that is still none of them: read again, then refused.
                worker.options.reread_seconds = 3600.0
                before = _metadata_reads(url)
                worker.options._read_at["lead"] = -1e9  # due for one read again
                for n in range(3):  # one batch each
                    _sql(
                        labels_store,
                        "INSERT INTO lead (email, last_name, rating) VALUES (:e, 'L', 'Lukewarm')",
                        e=f"l{n}@x.org",
                    )
                    await _until(lambda n=n: len(_errors(labels_store)) == n + 1)
                # Three refusals in a row: one metadata read, rate-limited after it.
                assert _metadata_reads(url) - before == 1
            finally:
                worker.stop()
                await asyncio.wait_for(task, 20)

    try:
        asyncio.run(run())
    finally:
        sales.close()
    errors = _errors(labels_store)
    assert {(e.direction, e.error_code, e.field, e.status) for e in errors} == {
        ("to_crm", "crmsync.invalid_value", "rating", "open")
    }
    assert "'Lukewarm' is not one of leadqualitycode's options in Dynamics" in (
        errors[0].error_message
    )
    assert "5 'Icy'" in errors[0].error_message


def test_an_error_refused_before_the_options_changed_is_retried_when_they_are_read(
    labels_settings: Settings,
    labels_store: sa.Engine,
    quality: Any,
) -> None:
    """Refused while the re-read was rate-limited: the periodic read that finds the new
    option retries it; nothing is lost."""
    url = labels_settings.dynamics_url or ""
    # Read at start, then no re-read on a miss (a copy is not validated: loaded settings
    # could not have the re-read rarer than the periodic read).
    settings = labels_settings.model_copy(
        update={"poll_seconds": 0.2, "choice_refresh_seconds": 4.0, "choice_reread_seconds": 3600.0}
    )

    async def run() -> None:
        async with DataverseClient.from_settings(settings) as client:
            worker = Worker(labels_store, client, settings, concurrency=1)
            task = asyncio.create_task(worker.run())
            try:
                await _until(lambda: worker.puller.specs["lead"].field_specs["rating"].options_read)
                assert worker.options is not None
                quality(((1, "Hot"), (2, "Warm"), (3, "Cold"), (4, "Frozen")))
                _sql(
                    labels_store,
                    "INSERT INTO lead (email, last_name, rating) VALUES ('f@x.org', 'F', 'Frozen')",
                )
                await _until(lambda: len(_errors(labels_store)) == 1)
                assert worker.options.reads == {"lead": 0}
                # The periodic read comes, finds option 4 and retries the error.
                await _until(lambda: _crm(url).get("f@x.org", (None, None))[1] == 4)
            finally:
                worker.stop()
                await asyncio.wait_for(task, 20)

    asyncio.run(run())
    [error] = _errors(labels_store)
    assert (error.field, error.status) == ("rating", "resolved")


def _cli(settings: Settings, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "crmsync.toml"
    config.write_text(
        "[objects.lead.fields]\n"
        'rating = { attribute = "leadqualitycode", type = "choice", labels = true }\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env.update(
        CRMSYNC_CONFIG=str(config),
        CRMSYNC_DATABASE_URL=settings.database_url,
        CRMSYNC_DYNAMICS_URL=settings.dynamics_url or "",
        CRMSYNC_AUTHORITY_URL=settings.authority_url or "",
        CRMSYNC_TENANT_ID=settings.tenant_id or "",
        CRMSYNC_CLIENT_ID=settings.client_id or "",
        CRMSYNC_CLIENT_SECRET="test-secret",
    )
    command = str(Path(sys.executable).with_name("crmsync"))
    return subprocess.run(
        [command, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_label_renamed_in_dynamics_is_reported_refused_when_sent_and_resynced(
    labels_settings: Settings,
    labels_store: sa.Engine,
    drain: Any,
    quality: Any,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    for email in ("a@x.org", "b@x.org"):
        _sql(
            labels_store,
            "INSERT INTO lead (email, last_name, rating) VALUES (:e, 'X', 'Hot')",
            e=email,
        )
    drain(labels_settings, labels_store)
    assert {e: v for e, (_, v) in _crm(labels_settings.dynamics_url or "").items()} == {
        "a@x.org": 1,
        "b@x.org": 1,
    }
    # Someone renames option 1 in Dynamics.
    quality(((1, "Very hot"), (2, "Warm"), (3, "Cold")))
    _sql(labels_store, "UPDATE lead SET last_name = 'A2' WHERE email = 'a@x.org'")
    with caplog.at_level(logging.WARNING, logger="crmsync.engine.choices"):
        drain(labels_settings, labels_store)
    [warning] = [r for r in caplog.records if getattr(r, "event", "") == "mapping.choice_unknown"]
    assert (warning.object, warning.field, warning.rows) == ("lead", "rating", 2)  # type: ignore[attr-defined]
    assert "'Hot' (2)" in warning.getMessage()
    # The edited lead is refused, naming the field; Dynamics still has it as it was.
    [error] = _errors(labels_store)
    assert (error.direction, error.field, error.status) == ("to_crm", "rating", "open")
    assert "'Hot' is not one of leadqualitycode's options in Dynamics (1 'Very hot'" in (
        error.error_message
    )
    # The other lead takes Dynamics' label by a resync from Dynamics, as the docs say:
    # the command runs the job itself, reading the options as a worker does.
    with labels_store.connect() as conn:
        b_id = conn.execute(sa.text("SELECT id FROM lead WHERE email = 'b@x.org'")).scalar_one()
    done = _cli(
        labels_settings, tmp_path, "resync", "lead", "--direction", "from_crm", "--id", str(b_id)
    )
    assert done.returncode == 0, done.stderr
    assert "1 lead records queued again" in done.stdout
    drain(labels_settings, labels_store)
    assert _ratings(labels_store)["b@x.org"] == "Very hot"
    # The operator corrects the edited one; it goes, with its edit.
    _sql(labels_store, "UPDATE lead SET rating = 'Very hot' WHERE email = 'a@x.org'")
    drain(labels_settings, labels_store)
    assert [e.status for e in _errors(labels_store)] == ["resolved"]
    sales = Sales(labels_settings.dynamics_url or "")
    try:
        crm_id = _crm(labels_settings.dynamics_url or "")["a@x.org"][0]
        got = sales.http.get(f"leads({crm_id})?$select=lastname,leadqualitycode").json()
    finally:
        sales.close()
    assert (got["lastname"], got["leadqualitycode"]) == ("A2", 1)
    with labels_store.connect() as conn:
        assert status.paused(conn) == []


def test_a_choice_column_dynamics_lacks_pauses_that_object_alone(
    sync_settings: Settings, store: sa.Engine, drain: Any, crm_rows: Any
) -> None:
    field = {"attribute": "new_tier", "type": "choice", "labels": True}
    settings = load_settings(
        **{**sync_settings.model_dump(), "objects": {"lead": {"fields": {"tier": field}}}}
    )
    try:
        migrate.upgrade(store, settings.object_specs().values())
        _sql(store, "INSERT INTO lead (email, last_name, tier) VALUES ('t@x.org', 'T', 'Gold')")
        _sql(store, "INSERT INTO contact (email, last_name) VALUES ('k@x.org', 'K')")
        drain(settings, store)
        with store.connect() as conn:
            paused = status.paused(conn)
        assert [(p["object"], p["direction"]) for p in paused] == [("lead", "*")]
        assert "Dynamics has no Choice column lead.new_tier" in (paused[0]["reason"] or "")
        [error] = _errors(store)
        assert (error.record_id, error.error_code) == (None, "crmsync.mapping_mismatch")
        # The other objects synced; the lead waits in the backlog, not lost.
        assert [
            r["emailaddress1"]
            for r in crm_rows(settings.dynamics_url or "", "contacts", "emailaddress1")
        ] == ["k@x.org"]
        assert count(store, sync_queue, sync_queue.c.object == "lead") == 1
    finally:
        activate(default_objects())


async def _compare(settings: Settings, store: sa.Engine, record_id: int) -> Any:
    import httpx

    from crmsync.web.app import create_app

    app = create_app(settings, engine=store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": "Bearer t"},
    ) as c:
        r = await c.get(f"/api/v1/records/lead/{record_id}/compare")
        dynamics = getattr(app.state, "dynamics", None)
        if dynamics is not None:  # ASGITransport runs no lifespan
            await dynamics.aclose()
    assert r.status_code == 200, r.text
    return {f["field"]: f for f in r.json()["fields"]}


def test_compare_reads_the_options_and_sees_a_label_and_its_option_as_one(
    labels_settings: Settings, labels_store: sa.Engine, drain: Any, quality: Any
) -> None:
    from pydantic import SecretStr

    settings = labels_settings.model_copy(update={"api_token": SecretStr("t")})
    _sql(labels_store, "INSERT INTO lead (email, last_name, rating) VALUES ('a@x.org', 'A', 'Hot')")
    drain(settings, labels_store)
    with labels_store.connect() as conn:
        lead = conn.execute(sa.text("SELECT id FROM lead")).scalar_one()
    rating = asyncio.run(_compare(settings, labels_store, lead))["rating"]
    assert (rating["local"], rating["dynamics"], rating["same"]) == (1, 1, True)
    # Renamed in Dynamics (read again by a new app): the stale label differs.
    quality(((1, "Very hot"), (2, "Warm"), (3, "Cold")))
    rating = asyncio.run(_compare(settings, labels_store, lead))["rating"]
    assert (rating["local"], rating["dynamics"], rating["same"]) == ("Hot", 1, False)


async def _write_and_describe(settings: Settings, store: sa.Engine, rating: str) -> Any:
    """POST a lead with ``rating`` to a ``crmsync serve`` app; its answer and the OpenAPI
    schema of the field."""
    from crmsync.web.app import create_app

    app = create_app(settings, engine=store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": "Bearer t"},
    ) as c:
        r = await c.post(
            "/api/v1/records/lead", json={"email": f"{len(rating)}@x.org", "rating": rating}
        )
        doc = (await c.get("/api/v1/openapi.json")).json()
    return r, doc["components"]["schemas"]["LeadFields"]["properties"]["rating"]


def test_serve_checks_a_label_against_the_options_a_worker_stored(
    labels_settings: Settings, labels_store: sa.Engine, drain: Any
) -> None:
    from pydantic import SecretStr

    settings = labels_settings.model_copy(update={"api_token": SecretStr("t")})
    # No worker has read the options: any label is taken (the worker refuses it later).
    r, schema = asyncio.run(_write_and_describe(settings, labels_store, "Lukewarm"))
    assert r.status_code == 201, r.text
    assert "enum" not in json.dumps(schema)
    _sql(labels_store, "DELETE FROM lead")
    _sql(labels_store, "DELETE FROM sync_queue")
    drain(settings, labels_store)  # a worker reads the options and stores them
    assert len(_stored(labels_store)) == 3
    r, schema = asyncio.run(_write_and_describe(settings, labels_store, "Tepid"))
    assert r.status_code == 422, r.text
    body = r.json()["error"]
    assert body["code"] == "invalid_field" and body["field"] == "rating"
    assert "'Tepid' is not one of leadqualitycode's options in Dynamics" in body["message"]
    assert "(1 'Hot', 2 'Warm', 3 'Cold')" in body["message"]
    assert schema["anyOf"][0] == {"enum": ["Hot", "Warm", "Cold"]}
    r, _ = asyncio.run(_write_and_describe(settings, labels_store, "Warm"))
    assert r.status_code == 201, r.text
    assert _ratings(labels_store) == {"4@x.org": "Warm"}
