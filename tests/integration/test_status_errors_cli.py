"""``crmsync status`` and ``crmsync errors`` over a seeded store, on both backends."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
import test_errors_api as errors_fixture
import test_status_api as status_fixture
from sqlalchemy import Engine
from typer.testing import CliRunner

from crmsync.cli import app
from crmsync.store.schema import sync_queue

AT = status_fixture.AT


@pytest.fixture
def run(db_url: str):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(
            app, list(args), env={"CRMSYNC_DATABASE_URL": db_url, "COLUMNS": "200"}
        )

    return invoke


def test_status_json_is_the_api_body(run, engine: Engine):
    status_fixture.seed(engine)
    result = run("status", "--json", "--at", AT)
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    lead = {r["object"]: r for r in body["objects"]}["lead"]
    assert (lead["inserts"], lead["updates"], lead["total"]) == (2, 2, 4)


def test_status_table_backlog_last_hour_and_details(run, engine: Engine):
    status_fixture.seed(engine)
    result = run("status", "--at", AT)
    assert result.exit_code == 0, result.output
    assert "Sync Status - backlog" in result.output and "lead" in result.output
    result = run("status", "--view", "last-hour", "--at", AT)
    assert result.exit_code == 0, result.output
    assert "N/A" in result.output
    assert "2026-11-25T12:00:00+00:00 to 2026-11-25T13:00:00+00:00" in result.output
    assert "23" in result.output
    result = run("status", "--object", "lead", "--at", AT)
    assert result.exit_code == 0, result.output
    assert "l1@example.com" in result.output and "old@example.com" in result.output
    backlog = run("status", "--at", AT).output
    assert "shrinking" in backlog and "against the backlog at 2026-11-25T10:15:00+00:00" in backlog
    details = json.loads(run("status", "--object", "lead", "--json", "--at", AT).output)
    assert details["updates"]["oldest"]["record_id"] == 5


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("status", "--view", "weekly"), "--view"),
        (("status", "--at", "noon"), "--at"),
        (("status", "--object", "invoice"), "--object"),
        (("errors", "list", "--status", "closed"), "--status"),
        (("errors", "list", "--direction", "up"), "--direction"),
        (("errors", "list", "--since", "today"), "--since"),
        (("errors", "export", "x.csv", "--until", "2026-11-25T10:00:00"), "--until"),
        (("errors", "retry", "--all", "--search", "a\x00b"), "--search"),
    ],
)
def test_bad_options_exit_2_naming_them(run, args, flag):
    result = run(*args)
    assert result.exit_code == 2
    assert flag in result.output


def test_errors_list_export_retry(run, engine: Engine, tmp_path: Path):
    errors_fixture.seed(engine)
    listed = json.loads(run("errors", "list", "--json").output)
    assert [i["id"] for i in listed["items"]] == [4, 3, 2, 1]
    listed = json.loads(run("errors", "list", "--search", "EXAMPLE.com", "--json").output)
    assert [i["id"] for i in listed["items"]] == [3, 2, 1]
    window = ("--since", "2026-11-25T11:00:00Z", "--until", "2026-11-25T12:00:00+00:00")
    listed = json.loads(run("errors", "list", *window, "--json").output)
    assert [i["id"] for i in listed["items"]] == [2]
    table = run("errors", "list", "--object", "contact")
    assert table.exit_code == 0 and "local_constraint" in table.output

    out = tmp_path / "errors.csv"
    result = run("errors", "export", str(out), "--status", "all")
    assert result.exit_code == 0, result.output
    with out.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == list(errors_fixture.ERROR_FIELDS) and len(rows) == 7
    out_json = tmp_path / "errors.json"
    assert run("errors", "export", str(out_json), "--format", "json").exit_code == 0
    assert len(json.loads(out_json.read_text(encoding="utf-8"))) == 4

    assert run("errors", "retry").exit_code == 2
    assert run("errors", "retry", "--id", "1", "--object", "lead").exit_code == 2
    missing = run("errors", "retry", "--id", "999")
    assert missing.exit_code == 1 and "999" in missing.output
    result = run("errors", "retry", "--id", "1")
    assert result.exit_code == 0, result.output
    assert "1 errors selected, 1 records queued again" in result.output
    result = run("errors", "retry", "--all", "--object", "contact")
    assert "1 errors selected, 1 records queued again" in result.output
    with engine.connect() as conn:
        states = set(conn.execute(sa.select(sync_queue.c.state)).scalars())
    assert states == {"pending"}
