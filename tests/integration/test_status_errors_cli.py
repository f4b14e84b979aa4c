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
from crmsync.store.schema import sync_error, sync_pause, sync_queue
from crmsync.store.types import utcnow

AT = status_fixture.AT


@pytest.fixture
def run(db_url: str):
    runner = CliRunner()

    def invoke(*args: str, columns: int = 200):
        return runner.invoke(
            app, list(args), env={"CRMSYNC_DATABASE_URL": db_url, "COLUMNS": str(columns)}
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
    assert "Sync Status: backlog as of 2026-11-25 13:20:00 UTC" in result.output
    assert "lead" in result.output
    result = run("status", "--view", "last-hour", "--at", AT)
    assert result.exit_code == 0, result.output
    assert "N/A" in result.output
    assert "from 2026-11-25 12:00:00 to 2026-11-25 13:00:00 UTC" in result.output
    assert "23" in result.output
    result = run("status", "--object", "lead", "--at", AT)
    assert result.exit_code == 0, result.output
    assert "l1@example.com" in result.output and "old@example.com" in result.output
    backlog = run("status", "--at", AT).output
    assert "shrinking" in backlog and "against the backlog at 2026-11-25 10:15:00 UTC" in backlog
    details = json.loads(run("status", "--object", "lead", "--json", "--at", AT).output)
    assert details["updates"]["oldest"]["record_id"] == 5


def test_status_says_the_time_to_drain_paused_or_no_rate_at_80_columns(run, engine: Engine):
    status_fixture.seed(engine)

    def drain_cells() -> dict[str, str]:
        result = run("status", "--at", AT, columns=80)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert max(len(line) for line in lines) <= 80, result.output
        header = next(line for line in lines if line.startswith("Object"))
        assert header.rstrip().endswith("Drain")
        rows = [line.split() for line in lines if line.split()[:1] in (["lead"], ["account"])]
        return {cells[0]: cells[-1] for cells in rows}

    # The numbers are those of test_status_api: lead has no from_crm rate, account drains.
    assert drain_cells() == {"lead": "\u2014", "account": "8s"}
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_pause).values(object="account", direction="*", paused_at=utcnow())
        )
    assert drain_cells() == {"lead": "\u2014", "account": "paused"}
    body = json.loads(run("status", "--json", "--at", AT).output)
    account = {r["object"]: r for r in body["objects"]}["account"]
    assert (account["drain"], account["eta_seconds"]) == ("paused", None)


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
        (("errors", "retry", "--all", "--category", "typo"), "--category"),
        (("errors", "list", "--category", "late"), "--category"),
        (("errors", "dismiss", "--all", "--field", "x" * 65), "--field"),
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
    assert result.output == "Retried 1 error: 1 record queued to sync again.\n"
    result = run("errors", "retry", "--all", "--object", "contact")
    assert result.output == "Retried 1 error: 1 record queued to sync again.\n"
    with engine.connect() as conn:
        states = set(conn.execute(sa.select(sync_queue.c.state)).scalars())
    assert states == {"pending"}


def test_errors_dismiss_by_id_and_by_filter(run, engine: Engine):
    errors_fixture.seed(engine)

    def statuses() -> dict[int, str]:
        with engine.connect() as conn:
            return dict(conn.execute(sa.select(sync_error.c.id, sync_error.c.status)).all())

    before = statuses()
    assert run("errors", "dismiss").exit_code == 2
    assert run("errors", "dismiss", "--id", "1", "--all").exit_code == 2
    assert run("errors", "dismiss", "--id", "1", "--code", "x").exit_code == 2
    bad = run("errors", "dismiss", "--all", "--object", "invoice")
    assert bad.exit_code == 2 and "--object" in bad.output
    missing = run("errors", "dismiss", "--id", "1", "--id", "999")
    assert missing.exit_code == 1 and "999" in missing.output
    assert statuses() == before  # nothing half done

    result = run("errors", "dismiss", "--id", "1")
    assert result.exit_code == 0 and result.output == "Dismissed 1 error.\n"
    assert statuses()[1] == "dismissed"
    # --all dismisses the open errors the filters match; resolved ones stay resolved.
    still_open = {i for i, st in statuses().items() if st == "open"}
    earlier = {i for i, st in before.items() if st == "dismissed"}
    assert len(still_open) == 3 and earlier
    result = run("errors", "dismiss", "--all", "--status", "all")
    assert result.exit_code == 0 and result.output == "Dismissed 3 errors.\n"
    after = statuses()
    assert {i for i, st in after.items() if st == "dismissed"} == {1, *still_open, *earlier}
    assert [st for i, st in after.items() if before[i] == "resolved"] == ["resolved"]
    listed = json.loads(run("errors", "list", "--status", "dismissed", "--json").output)
    assert {i["id"] for i in listed["items"]} == {1, *still_open, *earlier}


def test_errors_by_category_and_field_list_retry_and_dismiss(run, engine: Engine):
    now = utcnow()
    kinds = [
        ("1", "0x80044331", "data_too_long", "last_name"),
        ("2", "http_503", "unavailable", None),
        ("3", "http_503", "unavailable", None),
    ]
    with engine.begin() as conn:
        for key, code, category, field in kinds:
            conn.execute(
                sa.insert(sync_error).values(
                    object="lead", direction="to_crm", record_key=key, record_id=int(key),
                    operation="update", error_code=code, error_message="m",
                    first_failed_at=now, last_failed_at=now, status="open",
                    category=category, field=field,
                )
            )  # fmt: skip
            conn.execute(
                sa.insert(sync_queue).values(
                    object="lead", direction="to_crm", record_key=key, record_id=int(key),
                    operation="update", state="parked", first_queued_at=now,
                    last_changed_at=now, next_attempt_at=now, attempts=8,
                )
            )  # fmt: skip
    listed = json.loads(run("errors", "list", "--field", "last_name", "--json").output)
    assert [i["record_id"] for i in listed["items"]] == [1]
    assert listed["items"][0]["category"] == "data_too_long" and listed["items"][0]["fix"]
    result = run("errors", "retry", "--all", "--category", "unavailable")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Retried 2 errors: 2 records queued")
    with engine.connect() as conn:
        states = dict(conn.execute(sa.select(sync_queue.c.record_key, sync_queue.c.state)).all())
    assert states == {"1": "parked", "2": "pending", "3": "pending"}
    result = run("errors", "dismiss", "--all", "--category", "data_too_long")
    assert result.exit_code == 0 and result.output == "Dismissed 1 error.\n"


def test_errors_list_shows_category_and_field_in_the_table_blocks_and_json(run, engine: Engine):
    at = status_fixture.t("12:00")
    with engine.begin() as conn:
        for key, code, category, field, retry_at in (
            ("1", "0x80044331", "data_too_long", "last_name", None),
            ("2", "http_503", "unavailable", None, status_fixture.t("13:30")),
        ):
            conn.execute(
                sa.insert(sync_error).values(
                    object="lead", direction="to_crm", record_key=key, record_id=int(key),
                    record_label=f"r{key}@example.com", operation="update", error_code=code,
                    error_message="m", first_failed_at=at, last_failed_at=at, status="open",
                    category=category, field=field, retry_at=retry_at,
                )
            )  # fmt: skip
    lines = run("errors", "list", columns=200).output.splitlines()
    assert lines[2].split() == [
        "Id", "Object", "Op", "Direction", "Code", "Category", "Field", "Last", "failed",
        "Next", "retry", "Record", "Message",
    ]  # fmt: skip
    assert lines[4].split() == [
        "2", "lead", "update", "to_crm", "http_503", "unavailable", "-",
        "2026-11-25", "12:00:00", "2026-11-25", "13:30:00", "r2@example.com", "m",
    ]  # fmt: skip
    assert lines[5].split() == [
        "1", "lead", "update", "to_crm", "0x80044331", "data_too_long", "last_name",
        "2026-11-25", "12:00:00", "-", "r1@example.com", "m",
    ]  # fmt: skip
    narrow = run("errors", "list", columns=60).output.splitlines()
    assert "    category unavailable, field -, next retry" in narrow
    assert "    2026-11-25 13:30:00" in narrow  # the time whole, on the next line
    assert "    category data_too_long, field last_name" in narrow
    listed = json.loads(run("errors", "list", "--json").output)["items"]
    assert [(i["id"], i["category"], i["field"], i["retry_at"]) for i in listed] == [
        (2, "unavailable", None, "2026-11-25T13:30:00+00:00"),
        (1, "data_too_long", "last_name", None),
    ]


LONG = "0x80060891"


def test_errors_at_80_columns_keep_ids_codes_times_and_objects_whole(run, engine: Engine):
    errors_fixture.seed(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_error).values(
                object="opportunity",
                direction="from_crm",
                record_key="dddd",
                record_id=None,
                crm_id="dddddddd-0000-4000-8000-000000000001",
                record_label="Contoso renewal 2027, three-year enterprise agreement",
                operation="update",
                error_code=LONG,
                error_message="The remote server returned an error: (503) Server Unavailable. " * 4,
                first_failed_at=status_fixture.t("12:00"),
                last_failed_at=status_fixture.t("12:01"),
                attempts=7,
                status="open",
            )
        )
    result = run("errors", "list", columns=80)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, result.output
    for whole in (
        LONG,
        "2026-11-25 12:01:00",
        "opportunity",
        "dddddddd-0000-4000-8000-000000000001",
        "0x80040333",
        "from_crm",
    ):
        assert whole in result.output, whole
    assert "…" in result.output  # the long message is shortened, not one word a line
    assert not [line for line in lines if len(line.split()) == 1 and line.strip().isalpha()]
    # Each error is a block starting with its id.
    with engine.connect() as conn:
        ids = sorted(
            conn.execute(sa.select(sync_error.c.id).where(sync_error.c.status == "open")).scalars()
        )
    starts = [int(line.split()[0][1:]) for line in lines if line.startswith("#")]
    assert sorted(starts) == ids
    # Wide enough, the same errors are a table with one row each (and the same whole values).
    wide = run("errors", "list", columns=220).output
    assert "Id  Object" in wide and LONG in wide and "2026-11-25 12:01:00" in wide
    assert max(len(line) for line in wide.splitlines()) <= 220


def test_status_at_80_columns(run, engine: Engine):
    status_fixture.seed(engine)
    for args in (
        ("status", "--at", status_fixture.AT),
        ("status", "--view", "last-hour", "--at", status_fixture.AT),
        ("status", "--object", "lead", "--at", status_fixture.AT),
    ):
        result = run(*args, columns=80)
        assert result.exit_code == 0, result.output
        assert max(len(line) for line in result.output.splitlines()) <= 80, result.output
    backlog = run("status", "--at", status_fixture.AT, columns=80).output
    header = next(line for line in backlog.splitlines() if line.startswith("Object"))
    assert header.split() == [
        "Object",
        "Inserts",
        "Updates",
        "Deletes",
        "Total",
        "Oldest",
        "Trend",
        "Drain",
    ]
    lead = next(line for line in backlog.splitlines() if line.startswith("lead "))
    # 4 waiting, the oldest since 09:30 (3h50m at 13:20); from_crm has no recent rate.
    assert lead.split() == ["lead", "2", "2", "0", "4", "3h50m", "shrinking", "\u2014"]
    details = run("status", "--object", "lead", "--at", status_fixture.AT, columns=80).output
    assert "old@example.com" in details and "2026-11-25 09:30:00 UTC" in details


async def test_status_object_last_hour_is_the_apis_details(run, db_url: str, engine: Engine):
    status_fixture.seed(engine)
    result = run("status", "--object", "lead", "--view", "last-hour", "--json", "--at", AT)
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    async with await status_fixture.make_client(db_url, engine) as c:
        api = await c.get("/api/v1/sync/status/lead", params={"view": "last_hour", "at": AT})
    assert api.status_code == 200 and body == api.json()
    assert body["view"] == "last_hour" and body["synced"] == 23
    table = run("status", "--object", "lead", "--view", "last-hour", "--at", AT).output
    assert "lead: records synced from 2026-11-25 12:00:00 to 2026-11-25 13:00:00 UTC" in table
    total = next(line for line in table.splitlines() if line.startswith("Total"))
    assert total.split() == ["Total", "23"]
    by_op = {line.split()[0]: line.split()[1:] for line in table.splitlines() if line}
    to_crm, from_crm = body["by_direction"]["to_crm"], body["by_direction"]["from_crm"]
    for op in ("inserts", "updates", "deletes"):
        expected = [str(body[op]), str(to_crm[op]), str(from_crm[op])]
        assert by_op[op.capitalize()] == expected, op
    assert "waiting" not in table  # not the backlog's details
    narrow = run("status", "--object", "lead", "--view", "last-hour", "--at", AT, columns=40)
    assert "    2026-11-25 12:00:00 to" in narrow.output.splitlines()
    assert ["Total", "23"] in [line.split() for line in narrow.output.splitlines()]


CRM_ID = "dddddddd-0000-4000-8000-000000000001"
EMAIL = "first.middle.lastname-longer@subsidiary.example.com"  # 51 characters


@pytest.mark.parametrize("columns", [40, 60, 80])
def test_narrow_blocks_never_cut_ids_codes_times_or_names(run, engine: Engine, columns: int):
    status_fixture.seed(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(sync_error),
            [
                {
                    "object": "opportunity",
                    "direction": "from_crm",
                    "record_key": "dddd",
                    "record_id": None,
                    "crm_id": CRM_ID,
                    "record_label": "Contoso renewal 2027, three-year enterprise agreement",
                    "operation": "update",
                    "error_code": LONG,
                    "error_message": f"Entity opportunity With Id = {CRM_ID} Does Not Exist",
                    "first_failed_at": status_fixture.t("12:00"),
                    "last_failed_at": status_fixture.t("12:01"),
                    "attempts": 7,
                    "status": "open",
                },
                {
                    "object": "contact",
                    "direction": "to_crm",
                    "record_key": "123456789",
                    "record_id": 123456789,
                    "crm_id": None,
                    "record_label": EMAIL,
                    "operation": "insert",
                    "error_code": "0x80040333",
                    "error_message": f"A record with {EMAIL} exists",
                    "first_failed_at": status_fixture.t("12:02"),
                    "last_failed_at": status_fixture.t("12:03"),
                    "attempts": 1,
                    "status": "open",
                },
            ],
        )
    out = run("errors", "list", columns=columns).output
    lines = out.splitlines()
    # CRM_ID twice (record and message), EMAIL twice: each time on one line, whole.
    assert sum(line.count(CRM_ID) for line in lines) == 2, out
    assert sum(line.count(EMAIL) for line in lines) == 2, out
    for whole in (LONG, "0x80040333", "2026-11-25 12:01:00", "opportunity", "123456789"):
        assert whole in out, (whole, out)
    # A line is wider than the terminal only when it is one token that is itself wider.
    for line in lines:
        assert len(line) <= columns or len(line.split()) == 1, (line, out)
    for args in (
        ("status", "--at", AT),
        ("status", "--view", "last-hour", "--at", AT),
        ("status", "--object", "lead", "--at", AT),
        ("status", "--object", "lead", "--view", "last-hour", "--at", AT),
    ):
        text = run(*args, columns=columns).output
        assert all(len(line) <= columns for line in text.splitlines()), (args, text)
        stamps = ("2026-11-25 13:20:00", "2026-11-25 12:00:00", "2026-11-25 09:30:00")
        assert any(s in text for s in stamps), (args, text)
        for line in text.splitlines():  # no line ends in a date whose time went to the next
            assert not line.rstrip().endswith("2026-11-25"), (args, text)


def test_jobs_cancel_of_an_id_no_store_holds_is_a_usage_error(run, engine: Engine):
    """A job id beyond the store's 64-bit ids exits 2 naming the argument, not with an
    OverflowError's traceback (SQLite); an id in range that no job has exits 1."""
    result = run("jobs", "cancel", str(2**70))
    assert result.exit_code == 2, result.output
    assert "job_id" in result.output.lower() and "Traceback" not in result.output
    missing = run("jobs", "cancel", "5")
    assert missing.exit_code == 1 and "no job 5" in missing.output
