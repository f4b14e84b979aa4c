"""``GET /metrics`` parsed with prometheus_client's own parser, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
import test_errors_api as errors_fixture
import test_status_api as status_fixture
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from crmsync.config import load_settings
from crmsync.store.schema import sync_error, sync_queue
from crmsync.web import metrics as metrics_module
from crmsync.web.app import create_app

TOKEN = "metrics-token"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


@pytest.fixture
def app(db_url: str, engine: Engine):
    return create_app(load_settings(database_url=db_url, api_token=TOKEN), engine=engine)


async def scrape(app, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers
    ) as c:
        return await c.get("/metrics")


async def test_metrics_series(app, engine: Engine):
    status_fixture.seed(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(sync_error), errors_fixture.ERRORS)
    # A fresh pending entry whose age is known to within the test's run time.
    queued = datetime.now(UTC) - timedelta(hours=2)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_queue).values(
                **status_fixture.entry("opportunity", "from_crm", "ffff", "insert", "00:00"),
            )
        )
        conn.execute(
            sa.update(sync_queue)
            .where(sync_queue.c.record_key == "ffff")
            .values(first_queued_at=queued)
        )
    response = await scrape(app)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    backlog = "crmsync_backlog_records"
    assert got[key(backlog, object="lead", direction="to_crm", operation="insert")] == 2
    assert got[key(backlog, object="lead", direction="to_crm", operation="update")] == 1
    assert got[key(backlog, object="lead", direction="to_crm", operation="delete")] == 0
    assert got[key(backlog, object="lead", direction="from_crm", operation="update")] == 1
    assert got[key(backlog, object="contact", direction="to_crm", operation="insert")] == 0
    assert got[key(backlog, object="account", direction="from_crm", operation="delete")] == 1
    assert len([k for k in got if k[0] == backlog]) == 4 * 2 * 3
    age = got[key("crmsync_backlog_oldest_age_seconds", object="opportunity", direction="from_crm")]
    assert 7200 <= age < 7200 + 60
    assert got[key("crmsync_backlog_oldest_age_seconds", object="contact", direction="to_crm")] == 0
    synced = "crmsync_synced_records_total"
    # 5 + 3 + 2 + 7 + 1 + 4 + 100 lead to_crm inserts in the seeded buckets.
    assert got[key(synced, object="lead", direction="to_crm", operation="insert")] == 122
    assert got[key(synced, object="lead", direction="from_crm", operation="update")] == 10
    assert got[key(synced, object="account", direction="from_crm", operation="update")] == 6
    errors = "crmsync_sync_errors_total"
    assert got[key(errors, object="lead", direction="to_crm", code="0x80040333")] == 1
    assert got[key(errors, object="lead", direction="from_crm", code="0x80040333")] == 1
    assert got[key(errors, object="contact", direction="from_crm", code="local_constraint")] == 1
    assert key(errors, object="account", direction="from_crm", code="0x80040216") not in got
    names = {f.name for f in text_string_to_metric_families(response.text)}
    assert "crmsync_crm_requests" in names  # declared; no samples until counted
    assert "crmsync_dynamics_ratelimit_remaining_requests" in names
    assert "crmsync_dynamics_ratelimit_remaining_execution_seconds" in names


async def test_metrics_are_cached(app, engine: Engine, monkeypatch):
    first = samples((await scrape(app)).text)
    status_fixture.seed(engine)
    second = samples((await scrape(app)).text)
    assert first == second  # within the cache's lifetime
    monkeypatch.setattr(metrics_module, "CACHE_SECONDS", 0.0)
    third = samples((await scrape(app)).text)
    lead = key("crmsync_backlog_records", object="lead", direction="to_crm", operation="insert")
    assert third[lead] == 2


async def test_metrics_need_credentials(app):
    assert (await scrape(app, token=None)).status_code == 401
    assert (await scrape(app, token="wrong")).status_code == 401
