"""Push planning and retry policy: decisions without I/O."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from crmsync.engine import retry
from crmsync.engine.plan import (
    INVALID_CRM_ID,
    MISSING_REFERENCE,
    Defer,
    Park,
    Send,
    Skip,
    plan_entry,
)
from crmsync.mapping import default_objects
from crmsync.store.outbound import Parent
from crmsync.store.queue import Entry, bucket_start

NOW = datetime(2026, 11, 25, 13, 7, 30, tzinfo=UTC)
SPECS = default_objects()
SAVED = "5f0e8c1a-1d2b-4c3d-8e9f-0a1b2c3d4e51"
G = "5f0e8c1a-1d2b-4c3d-8e9f-0a1b2c3d4e52"
C1 = "5f0e8c1a-1d2b-4c3d-8e9f-0a1b2c3d4e53"
ACC = "5f0e8c1a-1d2b-4c3d-8e9f-0a1b2c3d4e54"


def entry(op: str, obj: str = "lead", crm_id: str | None = None, record_id: int = 1) -> Entry:
    return Entry(
        1, obj, "to_crm", str(record_id), record_id, crm_id, op, "x@example.com", None, 1, 0, NOW
    )


LEAD = {
    "id": 1,
    "crm_id": None,
    "email": "x@example.com",
    "first_name": "X",
    "last_name": "Y",
    "company": "Z",
}


def test_insert_is_an_upsert_under_a_chosen_id_with_duplicate_detection() -> None:
    step = plan_entry(
        entry("insert"), SPECS["lead"], LEAD, {}, detect_duplicates=True, new_id="g-1"
    )
    assert isinstance(step, Send)
    assert (step.write.op, step.write.record_id, step.crm_id) == ("upsert", "g-1", "g-1")
    assert step.write.detect_duplicates
    assert step.write.body == {
        "emailaddress1": "x@example.com",
        "firstname": "X",
        "lastname": "Y",
        "companyname": "Z",
    }


def test_retried_insert_reuses_the_saved_id() -> None:
    step = plan_entry(
        entry("insert", crm_id=SAVED),
        SPECS["lead"],
        LEAD,
        {},
        detect_duplicates=False,
        new_id="new",
    )
    assert isinstance(step, Send) and step.write.record_id == SAVED


def test_update_is_update_only_and_delete_needs_an_id() -> None:
    row = {**LEAD, "crm_id": G}
    step = plan_entry(entry("update"), SPECS["lead"], row, {}, detect_duplicates=True)
    assert isinstance(step, Send)
    assert (step.write.op, step.write.if_match, step.write.detect_duplicates) == (
        "update",
        "*",
        False,
    )
    gone = plan_entry(entry("delete", crm_id=G), SPECS["lead"], None, {}, detect_duplicates=True)
    assert isinstance(gone, Send) and gone.write.op == "delete" and gone.write.record_id == G
    assert isinstance(
        plan_entry(entry("delete"), SPECS["lead"], None, {}, detect_duplicates=True), Skip
    )


def test_row_deleted_after_claim_is_skipped() -> None:
    assert isinstance(
        plan_entry(entry("update"), SPECS["lead"], None, {}, detect_duplicates=True), Skip
    )


def test_contact_lookup_binds_waits_or_parks() -> None:
    contact = {
        "id": 1,
        "crm_id": None,
        "email": "c@x",
        "first_name": None,
        "last_name": "C",
        "account_id": 7,
    }
    e = entry("insert", "contact")
    bound = plan_entry(
        e,
        SPECS["contact"],
        contact,
        {("account", 7): Parent(ACC, False, "accounts")},
        detect_duplicates=False,
    )
    assert isinstance(bound, Send)
    assert bound.write.body is not None
    assert bound.write.body["parentcustomerid_account@odata.bind"] == f"/accounts({ACC})"
    waiting = plan_entry(
        e,
        SPECS["contact"],
        contact,
        {("account", 7): Parent(None, True, "accounts")},
        detect_duplicates=False,
    )
    assert isinstance(waiting, Defer)
    orphan = plan_entry(
        e,
        SPECS["contact"],
        contact,
        {("account", 7): Parent(None, False, "accounts")},
        detect_duplicates=False,
    )
    assert isinstance(orphan, Park) and orphan.code == MISSING_REFERENCE
    missing = plan_entry(e, SPECS["contact"], contact, {}, detect_duplicates=False)
    assert isinstance(missing, Park)


def test_backoff_doubles_is_jittered_and_capped() -> None:
    rnd = random.Random(3)
    delays = [retry.backoff_seconds(n, 1.0, 60.0, rnd=rnd) for n in range(1, 12)]
    for n, d in enumerate(delays, start=1):
        full = min(60.0, 2.0 ** (n - 1))
        assert full / 2 <= d <= full
    assert max(delays) <= 60.0


def test_retry_after_is_a_floor() -> None:
    when = retry.next_attempt(NOW, 1, 1.0, 60.0, retry_after=30.0, rnd=random.Random(1))
    assert when - NOW >= timedelta(seconds=30)
    assert retry.exhausted(8, 8) and not retry.exhausted(7, 8)


def test_buckets_are_quarter_hours() -> None:
    assert bucket_start(NOW) == datetime(2026, 11, 25, 13, 0, tzinfo=UTC)
    assert bucket_start(NOW.replace(minute=44, second=59)) == datetime(
        2026, 11, 25, 13, 30, tzinfo=UTC
    )
    assert bucket_start(NOW.replace(minute=45)) == datetime(2026, 11, 25, 13, 45, tzinfo=UTC)


def test_an_excluded_record_is_skipped_whatever_the_operation() -> None:
    for op in ("insert", "update", "delete"):
        step = plan_entry(
            entry(op, crm_id=C1),
            SPECS["lead"],
            {**LEAD, "crm_id": C1},
            {},
            detect_duplicates=True,
            etag='W/"5"',
            excluded=True,
        )
        assert isinstance(step, Skip) and step.excluded
    sent = plan_entry(
        entry("update", crm_id=C1),
        SPECS["lead"],
        {**LEAD, "crm_id": C1},
        {},
        detect_duplicates=True,
    )
    assert isinstance(sent, Send)


BAD = "<svg onload=alert(3)>"


def test_a_crm_id_that_is_not_a_guid_is_parked_and_never_sent() -> None:
    """Issue 16 item 7: any program may write a local row's ``crm_id``; one that is not
    a Dynamics id must never reach a URL (crmsync sent ``PATCH leads(<svg ...>)``)."""
    cases = [
        (entry("update", crm_id=BAD), SPECS["lead"], {**LEAD, "crm_id": BAD}, {}),
        (entry("insert", crm_id=BAD), SPECS["lead"], LEAD, {}),
        (entry("delete", crm_id=BAD), SPECS["lead"], None, {}),
        (entry("update", crm_id="1234"), SPECS["lead"], {**LEAD, "crm_id": "1234"}, {}),
        (
            entry("insert", "contact"),
            SPECS["contact"],
            {"id": 1, "crm_id": None, "email": "c@x", "last_name": "C", "account_id": 7},
            {("account", 7): Parent(f"{ACC}) or (1", False, "accounts")},
        ),
    ]
    for e, spec, row, parents in cases:
        step = plan_entry(e, spec, row, parents, detect_duplicates=False, new_id=SAVED)
        assert isinstance(step, Park), (e.operation, step)
        assert step.code == INVALID_CRM_ID
        assert "is not a Dynamics id" in step.message and "crm_id" in step.message
