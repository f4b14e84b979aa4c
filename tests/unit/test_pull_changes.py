"""Reading change-tracking rows and deciding what to stage: pure functions, no I/O."""

from __future__ import annotations

from crmsync.engine import changes as ch
from crmsync.mapping import default_objects

SPECS = default_objects()
LEAD, CONTACT = SPECS["lead"], SPECS["contact"]
ME = "00000000-0000-0000-0000-00000000aaaa"
SALES = "00000000-0000-0000-0000-00000000bbbb"
ACCOUNT = "11111111-1111-1111-1111-111111111111"


def lead_row(**extra: object) -> dict[str, object]:
    return {
        "@odata.etag": 'W/"1000010"',
        "leadid": "AAAAAAAA-0000-0000-0000-000000000001",
        "emailaddress1": "a@example.com",
        "firstname": "Ada",
        "lastname": "Lovelace",
        "companyname": None,
        "modifiedon": "2026-11-25T12:00:00Z",
        "_modifiedby_value": SALES,
        "versionnumber": 1000010,
        **extra,
    }


def test_a_row_becomes_local_values_with_bookkeeping() -> None:
    c = ch.read_row(LEAD, lead_row(), None)
    assert c.crm_id == "aaaaaaaa-0000-0000-0000-000000000001"  # ids compared lower-case
    assert c.values == {
        "email": "a@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "company": None,
    }
    assert (c.version, c.modified_by, c.excluded) == (1000010, SALES, False)
    assert c.modified_datetime is not None and c.modified_datetime.tzinfo is not None
    assert ch.Change.from_payload(c.crm_id, c.payload()) == c


def test_version_falls_back_to_the_etag() -> None:
    row = lead_row()
    del row["versionnumber"]
    assert ch.read_row(LEAD, row, None).version == 1000010


def test_lookups_keep_the_parent_dynamics_id() -> None:
    row = {
        "contactid": "C" * 8 + "-0000-0000-0000-000000000001",
        "_parentcustomerid_value": ACCOUNT,
    }
    assert ch.read_row(CONTACT, row, None).lookups == {"account_id": ACCOUNT}
    assert "_parentcustomerid_value" in ch.select_for(CONTACT, None)


def test_only_an_explicit_no_excludes() -> None:
    field = "new_synctomkto"
    assert ch.read_row(LEAD, lead_row(new_synctomkto=False), field).excluded
    assert not ch.read_row(LEAD, lead_row(new_synctomkto=True), field).excluded
    assert not ch.read_row(LEAD, lead_row(new_synctomkto=None), field).excluded
    assert not ch.read_row(LEAD, lead_row(), field).excluded
    assert field in ch.select_for(LEAD, field)


def test_what_gets_staged() -> None:
    change = ch.read_row(LEAD, lead_row(), None)
    synced = dict(change.values)
    stage = ch.stage_operation
    assert stage(LEAD, change, None, {}, ME) == "insert"
    assert stage(LEAD, change, ch.Known(1, {**synced, "last_name": "Old"}, 1000005), {}, ME) == (
        "update"
    )
    # Nothing to do: already synced (same values, or not newer), or our own write.
    assert stage(LEAD, change, ch.Known(1, synced, 1000005), {}, ME) is None
    assert stage(LEAD, change, ch.Known(1, {}, 1000010), {}, ME) is None
    own = ch.read_row(LEAD, lead_row(_modifiedby_value=ME), None)
    assert stage(LEAD, own, ch.Known(1, {}, 1000001), {}, ME) is None
    # A record deleted locally (its delete on its way) is not brought back.
    assert stage(LEAD, change, ch.Known(1, {}, None, local_delete_pending=True), {}, ME) is None
    excluded = ch.read_row(LEAD, lead_row(new_synctomkto=False), "new_synctomkto")
    assert stage(LEAD, excluded, ch.Known(1, {}, 1), {}, ME) is None


def test_an_unknown_record_is_inserted_only_if_crmsync_neither_wrote_nor_deleted_it() -> None:
    """Issue 16 item 1: a record the store does not know that crmsync wrote (its local
    row deleted since the page was read) or deleted (a tombstone) is never inserted,
    even when the own-write check is off (a refetch passes no user)."""
    theirs = ch.read_row(LEAD, lead_row(), None)
    own = ch.read_row(LEAD, lead_row(_modifiedby_value=ME), None)
    assert ch.stage_operation(LEAD, own, None, {}, ME) is None
    assert ch.stage_operation(LEAD, theirs, None, {}, ME, buried=True) is None
    assert ch.stage_operation(LEAD, theirs, None, {}, None, buried=True) is None
    assert ch.stage_operation(LEAD, theirs, None, {}, ME) == "insert"


def test_deletions_only_of_records_the_store_has() -> None:
    gone = ch.deleted("AAAAAAAA-0000-0000-0000-000000000001")
    assert ch.stage_operation(LEAD, gone, None, {}, ME) is None
    assert ch.stage_operation(LEAD, gone, ch.Known(7), {}, ME) == "delete"
    assert ch.stage_operation(LEAD, gone, ch.Known(7, marked_deleted=True), {}, ME) is None
    # A record the sync filter excluded no longer follows Dynamics' deletions.
    assert ch.stage_operation(LEAD, gone, ch.Known(7, {}, excluded=True), {}, ME) is None


def test_a_record_included_again_is_staged_even_with_unchanged_values() -> None:
    change = ch.read_row(LEAD, lead_row(new_synctomkto=True), "new_synctomkto")
    synced = dict(change.values)
    was_out = ch.Known(1, synced, 1000005, excluded=True)
    assert ch.stage_operation(LEAD, change, ch.Known(1, synced, 1000005), {}, ME) is None
    assert ch.stage_operation(LEAD, change, was_out, {}, ME) == "update"
    # Still excluded: nothing, whatever the state.
    still = ch.read_row(LEAD, lead_row(new_synctomkto=False), "new_synctomkto")
    assert ch.stage_operation(LEAD, still, was_out, {}, ME) is None
    # The rejoin marker travels in the queue entry's payload.
    marked = ch.Change.from_payload(change.crm_id, {**change.payload(), "rejoin": True})
    assert marked.rejoin and not ch.Change.from_payload(change.crm_id, change.payload()).rejoin


def test_a_lookup_counts_as_unchanged_only_when_it_resolves_to_the_synced_parent() -> None:
    row = {
        "contactid": "C" * 8 + "-0000-0000-0000-000000000001",
        "_parentcustomerid_value": ACCOUNT,
    }
    change = ch.read_row(CONTACT, row, None)
    base = {"email": None, "first_name": None, "last_name": None, "account_id": 5}
    known = ch.Known(3, base, 1)
    assert ch.stage_operation(CONTACT, change, known, {("account", ACCOUNT): 5}, ME) is None
    assert ch.stage_operation(CONTACT, change, known, {("account", ACCOUNT): 6}, ME) == "update"
    assert ch.stage_operation(CONTACT, change, known, {}, ME) == "update"


def test_parents_are_pulled_before_children() -> None:
    order = [s.name for s in ch.pull_order(SPECS)]
    assert order.index("account") < order.index("contact")
    assert order.index("account") < order.index("opportunity")
