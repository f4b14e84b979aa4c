"""Pull end to end: a Dynamics user's writes -> change tracking -> worker -> local tables.

Dynamics users here are separate application users of the emulator writing over real
HTTP (``Sales``); ``test_pull_sdk.py`` does the same with Microsoft's own SDK. Every
test drains with an in-process ``worker --once`` and compares both sides.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from pull_support import Sales, count, rows, sales_fixture  # noqa: F401 (fixture)

from crmsync.config import Settings, load_settings
from crmsync.store import apply as apply_store
from crmsync.store import audit, jobs
from crmsync.store.schema import sync_conflict, sync_cursor, sync_error, sync_queue, sync_record


def test_creates_updates_and_deletes_reach_local_tables_with_lookups(
    sync_settings: Settings, store: sa.Engine, sales: Sales, drain: Any
) -> None:
    acme = sales.create("accounts", {"name": "Acme"})
    globex = sales.create("accounts", {"name": "Globex"})
    lead = sales.create("leads", {"emailaddress1": "ada@example.com", "lastname": "Lovelace"})
    contact = sales.create(
        "contacts",
        {
            "emailaddress1": "c@example.com",
            "lastname": "Curie",
            "parentcustomerid_account@odata.bind": f"/accounts({acme})",
        },
    )
    deal = sales.create(
        "opportunities", {"name": "Big deal", "parentaccountid@odata.bind": f"/accounts({acme})"}
    )
    drain(sync_settings, store)

    accounts = rows(store, "account")
    assert {a["name"] for a in accounts.values()} == {"Acme", "Globex"}
    assert rows(store, "lead")[lead]["email"] == "ada@example.com"
    assert rows(store, "contact")[contact]["account_id"] == accounts[acme]["id"]
    assert rows(store, "opportunity")[deal]["account_id"] == accounts[acme]["id"]
    # Nothing applied from Dynamics was captured to go back.
    assert count(store, sync_queue) == 0
    assert count(store, sync_cursor, sync_cursor.c.delta_link.is_not(None)) == 4

    sales.update("leads", lead, {"lastname": "King"})
    sales.update(
        "contacts", contact, {"parentcustomerid_account@odata.bind": f"/accounts({globex})"}
    )
    sales.update("opportunities", deal, {"name": "Bigger deal"})
    sales.delete("accounts", acme)
    drain(sync_settings, store)
    assert rows(store, "lead")[lead]["last_name"] == "King"
    assert rows(store, "contact")[contact]["account_id"] == accounts[globex]["id"]
    assert rows(store, "opportunity")[deal]["name"] == "Bigger deal"
    assert acme not in rows(store, "account")
    assert count(store, sync_queue) == 0 and count(store, sync_error) == 0
    with store.connect() as conn:
        state = conn.execute(
            sa.select(sync_record.c.synced_values).where(
                sync_record.c.object == "lead",
                sync_record.c.record_id == rows(store, "lead")[lead]["id"],
            )
        ).scalar_one()
    assert state["last_name"] == "King"


def test_local_edit_is_pushed_once_and_does_not_come_back(
    sync_settings: Settings, store: sa.Engine, sql: Any, drain: Any, crm_rows: Any
) -> None:
    sql(store, "INSERT INTO lead (email, last_name) VALUES ('me@example.com', 'Mine')")
    drain(sync_settings, store)
    drain(sync_settings, store)
    with store.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lead")).scalar() == 1
    assert count(store, sync_queue) == 0
    assert [r["lastname"] for r in crm_rows(sync_settings.dynamics_url or "")] == ["Mine"]


def test_delete_behaviour_mark_keeps_the_row(
    sync_settings: Settings, store: sa.Engine, sales: Sales, drain: Any
) -> None:
    marking = load_settings(**{**sync_settings.model_dump(), "delete_behaviour": "mark"})
    lead = sales.create("leads", {"emailaddress1": "m@example.com", "lastname": "Mark"})
    drain(marking, store)
    sales.delete("leads", lead)
    drain(marking, store)
    row = rows(store, "lead")[lead]
    assert row["crm_deleted_at"] is not None
    assert count(store, sync_queue) == 0


def test_expired_delta_token_reconciles_fully_without_duplicates(
    sync_settings: Settings,
    store: sa.Engine,
    sales: Sales,
    drain: Any,
    crm_rows: Any,
    configure: Any,
    sql: Any,
) -> None:
    url = sync_settings.dynamics_url or ""
    leads = [
        sales.create("leads", {"emailaddress1": f"r{i}@example.com", "lastname": f"R{i}"})
        for i in range(12)
    ]
    accounts = [sales.create("accounts", {"name": f"A{i}"}) for i in range(3)]
    sql(store, "INSERT INTO lead (email, last_name) VALUES ('local@example.com', 'Local')")
    drain(sync_settings, store)
    assert len(rows(store, "lead")) == 13

    configure(url, expire_delta_tokens=True)
    for crm_id in leads[:3]:
        sales.update("leads", crm_id, {"lastname": "Changed"})
    for crm_id in leads[3:5]:
        sales.delete("leads", crm_id)
    added = sales.create("leads", {"emailaddress1": "new@example.com", "lastname": "New"})
    sales.delete("accounts", accounts[0])
    # Changed on both sides (a conflict: local wins for leads), and only locally.
    sales.update("leads", leads[5], {"lastname": "Remote"})
    sql(store, "UPDATE lead SET last_name = 'Local' WHERE crm_id = :c", {"c": leads[5]})
    sql(store, "UPDATE lead SET first_name = 'OnlyLocal' WHERE crm_id = :c", {"c": leads[6]})
    drain(sync_settings, store)

    remote = {r["leadid"]: r for r in crm_rows(url)}
    local = rows(store, "lead")
    assert set(local) == set(remote) and added in local
    with store.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lead")).scalar() == len(remote) == 12
    for crm_id, row in local.items():
        assert (row["email"], row["last_name"]) == (
            remote[crm_id]["emailaddress1"],
            remote[crm_id]["lastname"],
        )
    assert set(rows(store, "account")) == set(accounts[1:])
    assert count(store, sync_queue) == 0 and count(store, sync_error) == 0
    assert remote[leads[5]]["lastname"] == "Local"
    assert remote[leads[6]]["firstname"] == local[leads[6]]["first_name"] == "OnlyLocal"
    # The reconciliation shows as an audit with repair, which found nothing left.
    with store.connect() as conn:
        done = [j for j in jobs.recent(conn) if j.object == "lead"]
        (found,) = audit.last_results(conn, ["lead"])
    assert [(j.params["reason"], j.params["repair"], j.state) for j in done] == [
        ("delta_token_expired", True, "done")
    ]
    assert (found["only_local"], found["only_dynamics"], found["different"]) == (0, 0, 0)
    with store.connect() as conn:
        journal = conn.execute(sa.select(sync_conflict)).all()
    assert [(j.crm_id, j.field, j.winner) for j in journal] == [(leads[5], "last_name", "local")]
    # The new delta link works: a later change arrives incrementally.
    sales.update("leads", added, {"lastname": "Later"})
    drain(sync_settings, store)
    assert rows(store, "lead")[added]["last_name"] == "Later"


def test_sync_filter_only_explicit_no_excludes_and_excluded_records_stay(
    sync_settings: Settings, store: sa.Engine, sales: Sales, drain: Any
) -> None:
    filtered = load_settings(
        **{**sync_settings.model_dump(), "sync_filter_field": "new_synctomkto"}
    )
    yes = sales.create("leads", {"lastname": "Yes", "new_synctomkto": True})
    unset = sales.create("leads", {"lastname": "Unset"})
    no = sales.create("leads", {"lastname": "No", "new_synctomkto": False})
    account = sales.create("accounts", {"name": "No filter column on accounts"})
    drain(filtered, store)
    assert set(rows(store, "lead")) == {yes, unset}
    assert set(rows(store, "account")) == {account}

    sales.update("leads", yes, {"new_synctomkto": False, "lastname": "Now excluded"})
    drain(filtered, store)
    # Excluded from now on: not updated, and not deleted either.
    assert rows(store, "lead")[yes]["last_name"] == "Yes"
    sales.update("leads", no, {"new_synctomkto": True})
    drain(filtered, store)
    assert rows(store, "lead")[no]["last_name"] == "No"


def test_an_objects_own_sync_filter_takes_the_place_of_the_setting(
    sync_settings: Settings, store: sa.Engine, sales: Sales, drain: Any
) -> None:
    """Lead names its own filter with no setting; contact opts out of the setting's."""
    own = load_settings(
        **{
            **sync_settings.model_dump(),
            "sync_filter_field": None,
            "objects": {"lead": {"sync_filter_field": "new_synctomkto"}},
        }
    )
    yes = sales.create("leads", {"lastname": "Yes", "new_synctomkto": True})
    no = sales.create("leads", {"lastname": "No", "new_synctomkto": False})
    drain(own, store)
    assert set(rows(store, "lead")) == {yes}
    opted_out = load_settings(
        **{
            **sync_settings.model_dump(),
            "sync_filter_field": "new_synctomkto",
            "objects": {"contact": {"sync_filter_field": ""}},
        }
    )
    contact = sales.create("contacts", {"lastname": "Kept", "new_synctomkto": False})
    lead = sales.create("leads", {"lastname": "Out", "new_synctomkto": False})
    drain(opted_out, store)
    assert set(rows(store, "contact")) == {contact}
    assert set(rows(store, "lead")) == {yes}
    assert no not in rows(store, "lead") and lead not in rows(store, "lead")


def test_an_objects_own_sync_filter_missing_in_dynamics_pauses_it_and_is_not_dropped(
    sync_settings: Settings, store: sa.Engine, sales: Sales, drain: Any
) -> None:
    """The setting's filter column is optional per table (pulled unfiltered where it is
    missing); an object's own is part of its mapping: missing, the object pauses."""
    settings = load_settings(
        **{**sync_settings.model_dump(), "objects": {"lead": {"sync_filter_field": "new_gone"}}}
    )
    sales.create("leads", {"lastname": "Waits"})
    account = sales.create("accounts", {"name": "Goes"})
    drain(settings, store)
    assert rows(store, "lead") == {}
    assert set(rows(store, "account")) == {account}
    with store.connect() as conn:
        errors = conn.execute(
            sa.select(sync_error.c.object, sync_error.c.error_code, sync_error.c.error_message)
        ).all()
    assert [(e.object, e.error_code) for e in errors] == [("lead", "crmsync.mapping_mismatch")]
    assert "new_gone" in errors[0].error_message


def _excluded(engine: sa.Engine, record_id: int) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                sa.select(sync_record.c.excluded).where(
                    sync_record.c.object == "lead", sync_record.c.record_id == record_id
                )
            ).scalar_one()
        )


def test_an_excluded_record_stops_syncing_both_ways_until_included_again(
    sync_settings: Settings,
    store: sa.Engine,
    sales: Sales,
    drain: Any,
    sql: Any,
    crm_rows: Any,
) -> None:
    filtered = load_settings(
        **{**sync_settings.model_dump(), "sync_filter_field": "new_synctomkto"}
    )
    url = sync_settings.dynamics_url or ""

    def remote() -> dict[str, dict[str, Any]]:
        return {r["leadid"]: r for r in crm_rows(url)}

    def edit(crm_id: str, first_name: str) -> None:
        sql(
            store,
            "UPDATE lead SET first_name = :f WHERE crm_id = :c",
            {"f": first_name, "c": crm_id},
        )

    lead = sales.create("leads", {"lastname": "Kept", "new_synctomkto": True})
    gone = sales.create("leads", {"lastname": "Deleted there"})
    dropped = sales.create("leads", {"lastname": "Deleted here"})
    drain(filtered, store)
    edit(lead, "Before")
    drain(filtered, store)
    assert remote()[lead]["firstname"] == "Before"
    record_id = rows(store, "lead")[lead]["id"]

    for crm_id in (lead, gone, dropped):
        sales.update("leads", crm_id, {"new_synctomkto": False})
    drain(filtered, store)
    assert _excluded(store, record_id)
    # Excluded: local edits are not sent (no error, nothing left queued), Dynamics'
    # edits and deletions are not applied, and the local rows stay.
    edit(lead, "While out")
    sales.update("leads", lead, {"lastname": "Changed there"})
    sales.delete("leads", gone)
    sql(store, "DELETE FROM lead WHERE crm_id = :c", {"c": dropped})
    drain(filtered, store)
    local = rows(store, "lead")
    assert (local[lead]["first_name"], local[lead]["last_name"]) == ("While out", "Kept")
    assert gone in local and dropped not in local
    assert remote()[lead]["firstname"] == "Before" and dropped in remote()
    assert count(store, sync_queue) == 0 and count(store, sync_error) == 0
    # A record created locally meanwhile is not affected: it is pushed.
    sql(store, "INSERT INTO lead (email, last_name) VALUES ('new@example.com', 'New')")
    drain(filtered, store)
    assert "New" in {r["lastname"] for r in remote().values()}

    # Cleared in Dynamics (empty counts as Yes): what changed there while it was out is
    # applied, what changed here is sent (nothing lost), and later local edits go too.
    sales.update("leads", lead, {"new_synctomkto": None})
    drain(filtered, store)
    local = rows(store, "lead")
    assert (local[lead]["first_name"], local[lead]["last_name"]) == ("While out", "Changed there")
    assert (remote()[lead]["firstname"], remote()[lead]["lastname"]) == (
        "While out",
        "Changed there",
    )
    assert not _excluded(store, record_id)
    edit(lead, "After")
    drain(filtered, store)
    assert remote()[lead]["firstname"] == "After"
    assert rows(store, "lead")[lead]["first_name"] == "After"
    assert count(store, sync_queue) == 0 and count(store, sync_error) == 0


def test_a_rejoin_settles_both_sides_changes_with_the_rule_table(
    sync_settings: Settings, store: sa.Engine, sales: Sales, drain: Any, sql: Any
) -> None:
    """Both sides edited a record while the sync filter excluded it. Set back to Yes,
    it is resolved like any two-sided change against the last synced values: a field
    changed on one side takes that side's value (sent to Dynamics if it was local), a
    field changed on both follows the rule (leads: local wins; contacts: Dynamics wins)
    and is journaled once; a field both set to the same value is no conflict."""
    filtered = load_settings(
        **{**sync_settings.model_dump(), "sync_filter_field": "new_synctomkto"}
    )
    base = {"emailaddress1": "b@example.com", "firstname": "F", "lastname": "L"}
    lead = sales.create("leads", {**base, "companyname": "C", "new_synctomkto": True})
    contact = sales.create("contacts", {**base, "new_synctomkto": True})
    drain(filtered, store)
    for entity_set, crm_id in (("leads", lead), ("contacts", contact)):
        sales.update(entity_set, crm_id, {"new_synctomkto": False})
    drain(filtered, store)

    for table in ("lead", "contact"):
        sql(store, f"UPDATE {table} SET last_name = 'Here', first_name = 'OnlyHere'")
    sql(store, "UPDATE lead SET email = 'same@example.com'")
    sales.update("leads", lead, {"lastname": "There", "companyname": "OnlyThere"})
    sales.update("leads", lead, {"emailaddress1": "same@example.com"})
    sales.update("contacts", contact, {"lastname": "There", "emailaddress1": "t@example.com"})
    drain(filtered, store)  # still excluded: nothing moves either way
    assert rows(store, "lead")[lead]["company"] == "C"

    for entity_set, crm_id in (("leads", lead), ("contacts", contact)):
        sales.update(entity_set, crm_id, {"new_synctomkto": True})
    drain(filtered, store)

    def crm(entity_set: str, crm_id: str) -> dict[str, Any]:
        select = "firstname,lastname,emailaddress1" + (
            ",companyname" if entity_set == "leads" else ""
        )
        body: dict[str, Any] = sales.http.get(f"{entity_set}({crm_id})?$select={select}").json()
        return body

    local_lead, remote_lead = rows(store, "lead")[lead], crm("leads", lead)
    expected = ("OnlyHere", "Here", "OnlyThere", "same@example.com")
    assert (
        local_lead["first_name"],
        local_lead["last_name"],
        local_lead["company"],
        local_lead["email"],
    ) == expected
    assert (
        remote_lead["firstname"],
        remote_lead["lastname"],
        remote_lead["companyname"],
        remote_lead["emailaddress1"],
    ) == expected
    local_contact, remote_contact = rows(store, "contact")[contact], crm("contacts", contact)
    expected = ("OnlyHere", "There", "t@example.com")
    assert (local_contact["first_name"], local_contact["last_name"], local_contact["email"]) == (
        expected
    )
    assert (
        remote_contact["firstname"],
        remote_contact["lastname"],
        remote_contact["emailaddress1"],
    ) == expected
    with store.connect() as conn:
        journal = conn.execute(sa.select(sync_conflict).order_by(sync_conflict.c.object)).all()
    assert [(j.object, j.field, j.local_value, j.crm_value, j.winner, j.rule) for j in journal] == [
        ("contact", "last_name", "Here", "There", "crm", "crm_wins"),
        ("lead", "last_name", "Here", "There", "local", "local_wins"),
    ]
    assert count(store, sync_queue) == 0 and count(store, sync_error) == 0
    # Settled: another round moves nothing and journals nothing more.
    drain(filtered, store)
    with store.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_conflict)).scalar() == 2


def test_missing_parent_is_a_from_crm_error_that_retry_resolves(
    sync_settings: Settings, store: sa.Engine, sales: Sales, drain: Any, sql: Any
) -> None:
    # Accounts not pulled here: a contact's parent can never arrive by itself.
    one_way = load_settings(
        **{**sync_settings.model_dump(), "objects": {"account": {"flow": "to_crm"}}}
    )
    account = sales.create("accounts", {"name": "Not pulled here"})
    contact = sales.create(
        "contacts",
        {"lastname": "Orphan", "parentcustomerid_account@odata.bind": f"/accounts({account})"},
    )
    fine = sales.create("leads", {"lastname": "Fine"})
    drain(one_way, store)
    with store.connect() as conn:
        errors = conn.execute(sa.select(sync_error)).mappings().all()
    assert [(e["object"], e["direction"], e["error_code"]) for e in errors] == [
        ("contact", "from_crm", "crmsync.missing_parent")
    ]
    assert errors[0]["crm_id"] == contact and errors[0]["operation"] == "insert"
    assert fine in rows(store, "lead") and contact not in rows(store, "contact")
    assert count(store, sync_queue, sync_queue.c.state == "pending") == 0

    # The parent arrives (accounts pulled again); retrying the error applies the contact.
    sql(store, "INSERT INTO account (name, crm_id) VALUES ('Not pulled here', :c)", {"c": account})
    from crmsync.store.sync_errors import retry_ids

    with store.begin() as conn:
        retry_ids(conn, [errors[0]["id"]])
    drain(sync_settings, store)
    assert rows(store, "contact")[contact]["account_id"] is not None
    with store.connect() as conn:
        assert conn.execute(sa.select(sync_error.c.status)).scalar_one() == "resolved"


def test_a_local_constraint_parks_only_the_refused_record(
    sync_settings: Settings, store: sa.Engine, sales: Sales, drain: Any, sql: Any
) -> None:
    # The application's own rule: one lead per email.
    sql(store, "CREATE UNIQUE INDEX app_lead_email ON lead (email)")
    first = sales.create("leads", {"emailaddress1": "same@example.com", "lastname": "First"})
    second = sales.create("leads", {"emailaddress1": "same@example.com", "lastname": "Second"})
    others = [sales.create("leads", {"lastname": f"O{i}"}) for i in range(5)]
    drain(sync_settings, store)
    local = rows(store, "lead")
    # Whichever of the two came first is in; the other is refused, the rest unaffected.
    assert set(others) <= set(local) and len({first, second} & set(local)) == 1
    refused = second if first in local else first
    with store.connect() as conn:
        [error] = conn.execute(sa.select(sync_error)).mappings().all()
    assert (error["direction"], error["error_code"], error["crm_id"]) == (
        "from_crm",
        "crmsync.local_constraint",
        refused,
    )
    assert count(store, sync_queue, sync_queue.c.state == "pending") == 0
    # Fixed in Dynamics: the next change queues it again and it applies.
    sales.update("leads", refused, {"emailaddress1": "other@example.com"})
    drain(sync_settings, store)
    assert rows(store, "lead")[refused]["email"] == "other@example.com"
    with store.connect() as conn:
        assert conn.execute(sa.select(sync_error.c.status)).scalar_one() == "resolved"


def test_refused_writes_in_a_large_batch_are_found_by_halving(
    sync_settings: Settings,
    store: sa.Engine,
    sales: Sales,
    drain: Any,
    sql: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sql(store, "CREATE UNIQUE INDEX app_lead_email ON lead (email)")
    twins = [
        sales.create("leads", {"emailaddress1": f"twin{k}@example.com", "lastname": f"T{k}{i}"})
        for k in range(2)
        for i in range(2)
    ]
    others = [sales.create("leads", {"lastname": f"O{i}"}) for i in range(60)]
    calls: list[int] = []
    execute = apply_store.execute

    def counted(conn: Any, specs: Any, writes: Any, now: Any) -> Any:
        calls.append(len(writes))
        return execute(conn, specs, writes, now)

    monkeypatch.setattr(apply_store, "execute", counted)
    drain(sync_settings, store)
    local = rows(store, "lead")
    assert set(others) <= set(local)
    assert len(set(twins) & set(local)) == 2  # one of each pair
    with store.connect() as conn:
        codes = conn.execute(sa.select(sync_error.c.error_code)).scalars().all()
    assert codes == ["crmsync.local_constraint"] * 2
    # Two bad writes among 64 cost a few savepoints each, not one per write.
    assert len(calls) < 30, calls


def test_worker_once_cli_loads_pulls_and_exits_0_with_progress(
    sync_settings: Settings, store: sa.Engine, sales: Sales, start_worker: Any
) -> None:
    crm_ids = [sales.create("leads", {"lastname": f"Cli{i}"}) for i in range(7)]
    proc = start_worker("--once")
    assert proc.wait(timeout=60) == 0
    err = proc.stderr.read().decode()
    assert "initial load of lead: 7 rows" in err, err
    assert set(crm_ids) == set(rows(store, "lead"))
    # The second run reads only what changed since: no initial load any more.
    sales.update("leads", crm_ids[0], {"lastname": "Changed"})
    proc = start_worker("--once")
    assert proc.wait(timeout=60) == 0
    assert "initial load" not in proc.stderr.read().decode()
    assert rows(store, "lead")[crm_ids[0]]["last_name"] == "Changed"
