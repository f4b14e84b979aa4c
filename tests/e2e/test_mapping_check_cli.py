"""``crmsync mapping check`` against the emulator serving a mapping, with drift of
several kinds made deliberately; exit 0 when the mapping matches, 1 otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync.config import Settings, load_settings
from crmsync.emulator import mapped
from crmsync.mapping import activate, default_objects
from crmsync.store import migrate, status
from crmsync.store.db import create_store_engine, write_transaction
from crmsync.store.schema import sync_error, sync_queue

SERVED = """
[objects.lead.fields]
lead_score = { attribute = "new_leadscore", type = "integer" }
rating = { attribute = "new_rating", type = "choice", choices = { hot = 1, warm = 2 } }

[objects.event_registration]
entity_set = "new_eventregistrations"
logical_name = "new_eventregistration"
primary_key = "new_eventregistrationid"
label = "name"

[objects.event_registration.fields]
name = { attribute = "new_name", type = "string", max_length = 100 }
contact_id = { type = "lookup", target = "contact", attribute = "new_contactid" }
"""

DRIFTED = """
[objects.lead.fields]
lead_score = { attribute = "new_leadscore", type = "decimal" }
rating = { attribute = "new_rating", type = "choice", choices = { hot = 1, warm = 2, cold = 3 } }
email = { max_length = 250 }
nickname = { attribute = "new_nickname", type = "string" }

[objects.event_registration]
entity_set = "new_eventregistrations"
logical_name = "new_eventregistration"
primary_key = "new_eventregistrationid"
label = "name"

[objects.event_registration.fields]
name = { attribute = "new_name", type = "string", max_length = 100 }
contact_id = { type = "lookup", target = "account", attribute = "new_contactid" }

[objects.webinar]
entity_set = "new_webinars"
logical_name = "new_webinar"
primary_key = "new_webinarid"
label = "title"

[objects.webinar.fields]
title = { attribute = "new_title", type = "string" }
"""


@pytest.fixture
def served(sync_settings: Settings, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "served.toml"
    path.write_text(SERVED)
    os.environ["CRMSYNC_CONFIG"] = str(path)
    try:
        specs = load_settings(**sync_settings.model_dump(exclude={"objects"})).object_specs()
    finally:
        del os.environ["CRMSYNC_CONFIG"]
    added = mapped.serve_mapping(specs.values())
    yield path
    mapped.forget(added)
    activate(default_objects())


def check(settings: Settings, config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env.update(
        CRMSYNC_CONFIG=str(config),
        CRMSYNC_DATABASE_URL=settings.database_url,
        CRMSYNC_DYNAMICS_URL=settings.dynamics_url or "",
        CRMSYNC_AUTHORITY_URL=settings.authority_url,
        CRMSYNC_TENANT_ID=settings.tenant_id or "",
        CRMSYNC_CLIENT_ID=settings.client_id or "",
        CRMSYNC_CLIENT_SECRET="test-secret",
    )
    return subprocess.run(
        [str(Path(sys.executable).with_name("crmsync")), "mapping", "check", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_matching_mapping_exits_0(sync_settings: Settings, served: Path) -> None:
    result = check(sync_settings, served)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"mismatches": []}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_each_kind_of_drift_is_listed_and_exits_1(
    sync_settings: Settings, served: Path, tmp_path: Path
) -> None:
    drifted = tmp_path / "drifted.toml"
    drifted.write_text(DRIFTED)
    result = check(sync_settings, drifted)
    assert result.returncode == 1, result.stderr
    found = {(m["object"], m["field"], m["kind"]) for m in json.loads(result.stdout)["mismatches"]}
    assert found == {
        ("lead", "lead_score", "type"),
        ("lead", "rating", "choice"),
        ("lead", "email", "max_length"),
        ("lead", "nickname", "missing_attribute"),
        ("event_registration", "contact_id", "lookup_target"),
        ("webinar", None, "missing_entity"),
    }


WEBINAR = """
[objects.webinar]
entity_set = "new_webinars"
logical_name = "new_webinar"
primary_key = "new_webinarid"
label = "title"

[objects.webinar.fields]
title = { attribute = "new_title", type = "string" }
"""


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_a_worker_starts_by_pausing_the_objects_dynamics_lacks(
    sync_settings: Settings, tmp_path: Path, start_worker: Any, crm_rows: Any
) -> None:
    config = tmp_path / "webinar.toml"
    config.write_text(WEBINAR)
    os.environ["CRMSYNC_CONFIG"] = str(config)
    try:
        settings = load_settings(**sync_settings.model_dump(exclude={"objects"}))
    finally:
        del os.environ["CRMSYNC_CONFIG"]
        activate(default_objects())
    engine = create_store_engine(settings.database_url)
    try:
        migrate.upgrade(engine, settings.object_specs().values())
        with write_transaction(engine) as conn:
            conn.execute(sa.text("INSERT INTO lead (email, last_name) VALUES ('a@x.org', 'A')"))
            conn.execute(sa.text("INSERT INTO webinar (title) VALUES ('Launch')"))
        worker = start_worker("--once", config=str(config))
        assert worker.wait(timeout=90) == 0, worker.stderr.read().decode()
        with engine.connect() as conn:
            paused = status.paused(conn)
            waiting = conn.execute(sa.select(sync_queue.c.object, sync_queue.c.state)).all()
            errors = conn.execute(sa.select(sync_error.c.object, sync_error.c.error_code)).all()
    finally:
        engine.dispose()
    assert [(p["object"], p["direction"]) for p in paused] == [("webinar", "*")]
    assert "no table 'new_webinar'" in (paused[0]["reason"] or "")
    assert [tuple(w) for w in waiting] == [("webinar", "pending")]
    assert [tuple(e) for e in errors] == [("webinar", "crmsync.mapping_mismatch")]
    # The other objects synced.
    assert [r["emailaddress1"] for r in crm_rows(sync_settings.dynamics_url or "")] == ["a@x.org"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_crmsync_emulator_serves_the_mapping_it_is_given(tmp_path: Path) -> None:
    import time

    import httpx

    config = tmp_path / "served.toml"
    config.write_text(SERVED)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env["CRMSYNC_CONFIG"] = str(config)
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("crmsync")), "emulator", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                token = httpx.post(
                    f"{base}/t/oauth2/v2.0/token",
                    data={
                        "grant_type": "client_credentials",
                        "client_id": "x",
                        "client_secret": "s",
                    },
                    timeout=5,
                ).json()["access_token"]
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        api = httpx.Client(
            base_url=f"{base}/api/data/v9.2/", headers={"Authorization": f"Bearer {token}"}
        )
        table = api.get(
            "EntityDefinitions(LogicalName='new_eventregistration')"
            "?$select=LogicalName,EntitySetName&$expand=Attributes($select=LogicalName)"
        ).json()
        assert table["EntitySetName"] == "new_eventregistrations"
        names = {a["LogicalName"] for a in table["Attributes"]}
        assert {"new_eventregistrationid", "new_name", "new_contactid"} <= names
        lengths = api.get(
            "EntityDefinitions(LogicalName='new_eventregistration')/Attributes/"
            "Microsoft.Dynamics.CRM.StringAttributeMetadata?$select=LogicalName,MaxLength"
        ).json()["value"]
        assert {a["LogicalName"]: a["MaxLength"] for a in lengths}["new_name"] == 100
        created = api.post("new_eventregistrations", json={"new_name": "x" * 101})
        assert created.status_code == 400 and created.json()["error"]["code"] == "0x80044331"
        lead = api.post("leads", json={"lastname": "L", "new_leadscore": 2**31})
        assert lead.status_code == 400
        assert api.post("leads", json={"lastname": "L", "new_leadscore": 7}).status_code == 204
    finally:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
