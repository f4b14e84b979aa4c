"""The open errors' counts (triggers on sync_error) equal a count of the errors, always,
and the summary and filters by category and field read them; on SQLite and PostgreSQL.

Every writer of ``sync_error`` runs through its real code path: parks (``queue.record``),
whole-object failures, resolution by a sync, retries, dismissals, the automatic retries
(``retry_due``), pause/resume of a mapping mismatch; and random sequences of them with
compactions, compared with ``count(*)`` after every step.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsync.domain import STANDARD_OBJECTS, Direction
from crmsync.mapping import default_objects
from crmsync.store import capture, error_counts, migrate, queue, status, sync_errors
from crmsync.store.db import write_transaction
from crmsync.store.maintenance import compact_counts
from crmsync.store.schema import sync_error, sync_error_count
from crmsync.store.sync_errors import make_filters
from crmsync.store.types import utcnow

LEASE = timedelta(seconds=30)
Group = tuple[str, str, str, str, str | None]
FAULTS = [
    ("0x80044331", "The length of the 'lastname' attribute of the 'lead' entity", "last_name"),
    ("0x80044331", "The length of the 'emailaddress1' attribute of the 'lead' entity", "email"),
    ("0x80040333", "A record was not created or updated because a duplicate", None),
    ("http_503", "gave up after 8 attempts: HTTP 503", None),
    ("0x80040220", "Principal user is missing prvWriteLead privilege", None),
]  # fmt: skip


def truth(engine: sa.Engine) -> dict[Group, int]:
    e = sync_error.c
    group = (e.object, e.direction, e.error_code, e.category, e.field)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(*group, sa.func.count()).where(e.status == "open").group_by(*group)
        )
        return {tuple(r[:5]): int(r[5]) for r in rows}  # type: ignore[misc]


def counted(engine: sa.Engine) -> dict[Group, int]:
    s = error_counts.sums()
    with engine.connect() as conn:
        return {tuple(r[:5]): int(r[5]) for r in conn.execute(sa.select(s))}  # type: ignore[misc]


def summaries(engine: sa.Engine, **given: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The summary from the counts, and the same filters counted by a scan (a ``since``
    before every error makes it scan)."""
    with engine.connect() as conn:
        fast = make_filters(STANDARD_OBJECTS, **given)
        assert fast.counted
        scan = make_filters(STANDARD_OBJECTS, since="2000-01-01T00:00:00Z", **given)
        assert not scan.counted
        return sync_errors.summary(conn, fast), sync_errors.summary(conn, scan)


def insert_leads(engine: sa.Engine, n: int) -> list[queue.Entry]:
    with write_transaction(engine) as conn:
        for i in range(1, n + 1):
            conn.execute(sa.text("INSERT INTO lead (id, email) VALUES (:i, 'x' || :i)"), {"i": i})
    capture.fold_pending(engine)
    return queue.claim(engine, "w", Direction.TO_CRM, ["lead"], n, LEASE)


def park(engine: sa.Engine, entries: list[queue.Entry], fault: int, **kw: Any) -> None:
    code, message, field = FAULTS[fault]
    failed = [queue.Failed(e, code, message, field=field, **kw) for e in entries]
    queue.record(engine, queue.Outcome(failed=failed))


def test_summary_by_category_and_field_from_counts_equals_the_scan(engine: sa.Engine) -> None:
    a, b, c, d = insert_leads(engine, 4)
    park(engine, [a, b], 0)
    park(engine, [c], 1)
    park(engine, [d], 3)
    fast, scan = summaries(engine)
    assert fast == scan
    assert fast["total"] == 4
    assert fast["by_category"] == {"data_too_long": 3, "unavailable": 1}
    assert fast["by_field"] == {"last_name": 2, "email": 1}
    assert fast["by_code"] == {"0x80044331": 3, "http_503": 1}
    for only in ({"category": "data_too_long"}, {"field": "email"}, {"code": "http_503"}):
        fast, scan = summaries(engine, **only)
        assert fast == scan, only
    assert summaries(engine, category="permission")[0]["total"] == 0
    with engine.connect() as conn:
        listed = sync_errors.list_errors(conn, make_filters(STANDARD_OBJECTS, field="last_name"))
        assert {i["record_id"] for i in listed["items"]} == {a.record_id, b.record_id}
        assert all(i["category"] == "data_too_long" and i["fix"] for i in listed["items"])


def test_a_new_failure_of_another_kind_moves_the_error_between_groups(engine: sa.Engine) -> None:
    (a,) = insert_leads(engine, 1)
    park(engine, [a], 0)
    with write_transaction(engine) as conn:
        sync_errors.retry_matching(conn, make_filters(STANDARD_OBJECTS))
    (a2,) = queue.claim(engine, "w", Direction.TO_CRM, ["lead"], 1, LEASE)
    park(engine, [a2], 2)
    assert (
        counted(engine) == truth(engine) == {("lead", "to_crm", "0x80040333", "duplicate", None): 1}
    )


def test_resolve_dismiss_object_errors_and_resume_keep_the_counts(engine: sa.Engine) -> None:
    a, b, c = insert_leads(engine, 3)
    park(engine, [a, b, c], 4)
    now = utcnow()
    with write_transaction(engine) as conn:
        queue.resolve(conn, {("lead", "to_crm", a.record_key)}, now)
        sync_errors.dismiss(conn, 2)
        queue.fail_object(conn, "contact", Direction.FROM_CRM, "http_503", "down", now)
        status.pause_unusable(conn, "account", Direction.TO_CRM, "0x0", "name: gone", now)
    assert counted(engine) == truth(engine)
    fast, scan = summaries(engine)
    assert fast == scan and fast["by_category"] == {"permission": 1, "unavailable": 1, "mapping": 1}
    with write_transaction(engine) as conn:
        status.resume(conn, "account", "*", now)
        queue.resolve_object(conn, "contact", Direction.FROM_CRM, now)
        sync_errors.dismiss_matching(conn, make_filters(STANDARD_OBJECTS, category="permission"))
    assert counted(engine) == truth(engine) == {}
    compact_counts(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_error_count)).scalar() == 0


def test_retry_all_of_a_category_requeues_only_that_kind(engine: sa.Engine) -> None:
    a, b = insert_leads(engine, 2)
    park(engine, [a], 0)
    park(engine, [b], 4)
    with write_transaction(engine) as conn:
        done = sync_errors.retry(conn, STANDARD_OBJECTS, given={"category": "permission"})
    assert done == {"errors": 1, "requeued": 1}
    claimed = queue.claim(engine, "w", Direction.TO_CRM, ["lead"], 5, LEASE)
    assert [e.record_key for e in claimed] == [b.record_key]
    with write_transaction(engine) as conn, pytest.raises(Exception, match="category"):
        sync_errors.retry(conn, STANDARD_OBJECTS, given={"category": "nope"})


def test_due_automatic_retries_requeue_keeping_attempts(engine: sa.Engine) -> None:
    a, b = insert_leads(engine, 2)
    now = utcnow()
    park(engine, [a], 3, auto_retry_at=now + timedelta(minutes=1))
    park(engine, [b], 0)  # a data error: no automatic retry
    with write_transaction(engine) as conn:
        assert sync_errors.retry_due(conn, now) == 0
        assert sync_errors.retry_due(conn, now + timedelta(minutes=2)) == 1
        assert sync_errors.retry_due(conn, now + timedelta(days=30)) == 0  # done once
    later = now + timedelta(minutes=3)
    (again,) = queue.claim(engine, "w", Direction.TO_CRM, ["lead"], 5, LEASE, now=later)
    assert again.record_key == a.record_key and again.attempts == 1
    with engine.connect() as conn:
        open_errors = sync_errors.list_errors(conn, make_filters(STANDARD_OBJECTS))["total"]
        assert open_errors == 2  # nothing is purged, the error stays open until it syncs
        retry_at = conn.execute(sa.select(sync_error.c.retry_at)).scalars().all()
        assert retry_at == [None, None]


def test_a_resolved_or_dismissed_error_plans_no_retry(engine: sa.Engine) -> None:
    a, b = insert_leads(engine, 2)
    later = utcnow() + timedelta(minutes=1)
    park(engine, [a, b], 3, auto_retry_at=later)
    with write_transaction(engine) as conn:
        queue.resolve(conn, {("lead", "to_crm", a.record_key)}, utcnow())
        sync_errors.dismiss_ids(conn, [2])
        assert conn.execute(sa.select(sync_error.c.retry_at)).scalars().all() == [None, None]
        assert sync_errors.retry_due(conn, later + timedelta(days=1)) == 0


def test_truncate_of_the_errors_empties_the_counts(engine: sa.Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no TRUNCATE")
    park(engine, insert_leads(engine, 2), 0)
    with write_transaction(engine) as conn:
        conn.execute(sa.text("TRUNCATE sync_error"))
    assert counted(engine) == truth(engine) == {}


def test_upgrade_of_an_existing_store_categorises_and_counts(engine: sa.Engine) -> None:
    now = utcnow()
    with write_transaction(engine) as conn:
        command.downgrade(migrate.alembic_config(conn), "0010")
        for key, (code, message) in enumerate(
            [("0x80040333", "dup"), ("0x80048d19", "Cannot convert the literal"),
             ("0x80048d19", "Stream was not readable"), ("weird", "x")]
        ):  # fmt: skip
            conn.execute(
                sa.text(
                    "INSERT INTO sync_error (object, direction, record_key, operation,"
                    " error_code, error_message, first_failed_at, last_failed_at, status)"
                    " VALUES ('lead', 'to_crm', :k, 'insert', :c, :m, :t, :t, 'open')"
                ),
                {"k": str(key), "c": code, "m": message, "t": now},
            )
    migrate.upgrade(engine, default_objects().values())
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sync_error.c.category).order_by(sync_error.c.id)).scalars()
        assert list(rows) == ["duplicate", "invalid_value", "other", "other"]
    assert counted(engine) == truth(engine)
    assert sum(counted(engine).values()) == 4


ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("park"), st.integers(0, 4), st.integers(0, 5)),
        st.tuples(st.just("resolve"), st.integers(0, 5)),
        st.tuples(st.just("dismiss"), st.integers(1, 12)),
        st.tuples(st.just("retry"), st.sampled_from([None, "data_too_long", "unavailable"])),
        st.tuples(st.just("auto"), st.just(0)),
        st.tuples(st.just("delete"), st.integers(1, 12)),
        st.tuples(st.just("compact"), st.just(0)),
    ),
    max_size=25,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=ACTIONS)
def test_counts_always_equal_a_count_of_the_open_errors(engine: sa.Engine, steps: Any) -> None:
    with write_transaction(engine) as conn:
        for table in ("lead", "sync_queue", "sync_error", "sync_error_count"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
    entries = {e.record_key: e for e in insert_leads(engine, 6)}
    keys = sorted(entries)
    now = utcnow()
    for action in steps:
        kind = action[0]
        if kind == "park":
            claimed = queue.claim(engine, "w", Direction.TO_CRM, ["lead"], 10, LEASE)
            entries.update({e.record_key: e for e in claimed})
            entry = entries[keys[action[2]]]
            auto = now - timedelta(seconds=1) if action[1] == 3 else None
            park(engine, [entry], action[1], auto_retry_at=auto)
        elif kind == "resolve":
            with write_transaction(engine) as conn:
                queue.resolve(conn, {("lead", "to_crm", keys[action[1]])}, now)
        elif kind == "dismiss":
            with write_transaction(engine) as conn:
                conn.execute(
                    sa.update(sync_error)
                    .where(sync_error.c.id == action[1])
                    .values(status="dismissed")
                )
        elif kind == "retry":
            with write_transaction(engine) as conn:
                sync_errors.retry(conn, STANDARD_OBJECTS, given={"category": action[1]})
        elif kind == "auto":
            with write_transaction(engine) as conn:
                sync_errors.retry_due(conn, now)
        elif kind == "delete":
            with write_transaction(engine) as conn:
                conn.execute(sa.delete(sync_error).where(sync_error.c.id == action[1]))
        else:
            compact_counts(engine)
        assert counted(engine) == truth(engine), action
        fast, scan = summaries(engine)
        assert fast == scan, action


def test_upgrade_gives_errors_journaled_without_a_field_the_one_their_message_names(
    engine: sa.Engine,
) -> None:
    """Migration 0015: the parser's field for rows that have none; none overwritten, an
    unnamed one left null, the open errors' counts following."""
    now = utcnow()
    long = (
        "A validation error occurred.  The length of the 'lastname' attribute of the 'lead'"
        " entity exceeded the maximum allowed length of '50'."
    )
    rows = [
        ("lead", "0x80044331", long, None, "open"),
        ("lead", "0x80060888", "Could not find a property named 'companyname' on type"
         " 'Microsoft.Dynamics.CRM.lead'.", None, "resolved"),
        ("contact", "0x80040217", "account With Id = 1b2c Does Not Exist", None, "open"),
        ("contact", "crmsync.missing_parent", "account_id refers to account 1b2c, which is"
         " not in the local account table", None, "open"),
        ("lead", "0x80044331", long, "email", "open"),  # set when it failed: kept
        ("lead", "0x80040333", "A record with matching email already exists", None, "open"),
        ("lead", "0x80044331", "The length of the 'nope' attribute", None, "open"),
    ]  # fmt: skip
    with write_transaction(engine) as conn:
        command.downgrade(migrate.alembic_config(conn), "0014")
        for key, (obj, code, message, field, status) in enumerate(rows):
            conn.execute(
                sa.insert(sync_error).values(
                    object=obj, direction="to_crm", record_key=str(key), operation="insert",
                    error_code=code, error_message=message, first_failed_at=now,
                    last_failed_at=now, status=status, field=field,
                )
            )  # fmt: skip
    migrate.upgrade(engine, default_objects().values())
    with engine.connect() as conn:
        fields = conn.execute(sa.select(sync_error.c.field).order_by(sync_error.c.id)).scalars()
        assert list(fields) == [
            "last_name", "company", "account_id", "account_id", "email", None, None,
        ]  # fmt: skip
        assert migrate.current_revision(engine) == migrate.head_revision()
    assert counted(engine) == truth(engine)
    with engine.connect() as conn:  # the summary's "by field" reads the counts
        body = sync_errors.summary(conn, make_filters(STANDARD_OBJECTS))
    assert body["by_field"] == {"last_name": 1, "account_id": 2, "email": 1}
