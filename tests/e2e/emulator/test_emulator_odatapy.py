"""A generic OData v4 client from PyPI against the emulator over HTTPS, unpatched:
``odatapy`` (Beroe Inc., "modelled on Apache Olingo"; pinned in the ``test`` extra),
sync and async. It knows nothing of Dataverse: it reads the service document and the
``$metadata`` CSDL and types every payload by it, so it checks the emulator's OData
surface as any OData v4 client sees it. Only where it connects (the API root, and its
``OAuth2ClientCredentialsAuth`` pointed at the emulator's token URL), which certificate
it trusts (``SSL_CERT_FILE``, read by httpx) and ``odata_version="4.0"`` (a documented
constructor option; its default, 4.01, is a version Dataverse does not speak) are ours.

Its documented surface: the service document and ``$metadata`` (keys, properties and
their EDM types, navigation properties, function imports), queries (``$filter``,
``$select``, ``$orderby``, ``$top``, ``$count`` both ways, ``odata.maxpagesize``
paging through ``@odata.nextLink``, ``$expand`` single- and collection-valued,
navigation paths, single properties and ``$value``, ``$apply``, annotations, keys
and alternate keys), writes (create, ``PATCH``, ``PUT`` of a property, upsert by
alternate key, ETag-conditional delete, ``$ref`` add/list/remove/set, actions),
``$batch`` (a GET beside an atomic changeset with a ``$1`` reference, a failing
changeset, ``odata.continue-on-error``) and change tracking (``odata.track-changes``,
the delta link's new, changed and deleted rows), and its error class.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from emulator_https import Running
from odatapy.client import (
    AsyncEdmEnabledODataClient,
    AsyncHttpxTransport,
    EdmEnabledODataClient,
    HttpxTransport,
    OAuth2ClientCredentialsAuth,
    ODataClientError,
)


def _auth(run: Running) -> OAuth2ClientCredentialsAuth:
    return OAuth2ClientCredentialsAuth(
        f"{run.url}/od-tenant/oauth2/v2.0/token", "od-app", "secret", f"{run.url}/.default"
    )


@pytest.fixture
def od(fresh: Running, monkeypatch: pytest.MonkeyPatch) -> Iterator[EdmEnabledODataClient]:
    monkeypatch.setenv("SSL_CERT_FILE", str(fresh.ca_file))
    transport = HttpxTransport(auth=_auth(fresh))
    yield EdmEnabledODataClient(f"{fresh.url}/api/data/v9.2", transport, odata_version="4.0")
    transport._client.close()


def _seed(od: EdmEnabledODataClient) -> tuple[uuid.UUID, list[uuid.UUID]]:
    account = od.create_entity("accounts", {"name": "Acme"}).get_value("accountid")
    ids = []
    for i in range(5):
        body: dict[str, object] = {
            "lastname": f"L{i}",
            "firstname": "Odd" if i % 2 else "Even",
            "emailaddress1": f"c{i}@x.test",
        }
        if i < 2:
            body["parentcustomerid_account@odata.bind"] = f"/accounts({account})"
        ids.append(od.create_entity("contacts", body).get_value("contactid"))
    return account, ids


def _names(entities: list) -> list[str]:
    return [e.get_value("lastname") for e in entities]


def test_service_document_and_metadata(od: EdmEnabledODataClient) -> None:
    sets = od.get_service_document().entity_sets
    assert {"leads", "contacts", "accounts", "opportunities"} <= set(sets)
    contact = od.entity_set_type("contacts")
    assert contact.key_predicate_names == ["contactid"]
    assert {"lastname", "emailaddress1", "_parentcustomerid_value"} <= set(contact.property_names)
    assert str(contact.get_structural_property("contactid").type) == "Edm.Guid"
    assert "parentcustomerid_account" in contact.navigation_property_names
    assert "contact_customer_accounts" in od.entity_set_type("accounts").navigation_property_names
    imports = od.get_edm().entity_container.function_imports
    assert [f.name for f in imports] == ["WhoAmI"]
    who = od.invoke_function(od.uri().append_function_call_segment("WhoAmI")).value
    assert who["UserId"] and who["BusinessUnitId"] and who["OrganizationId"]


def test_queries(fresh: Running, od: EdmEnabledODataClient) -> None:
    fresh.emulator.configure({"alternate_keys": {"contacts": [["emailaddress1"]]}})
    account, ids = _seed(od)
    contacts = od.entity_set_uri
    query = contacts("contacts").select("lastname").filter("firstname eq 'Odd'")
    assert _names(od.get_entity_set(query.orderby("lastname desc")).entities) == ["L3", "L1"]
    page = od.get_entity_set(contacts("contacts").select("lastname").count().top(2))
    assert (page.count, len(page.entities)) == (5, 2)
    assert od.get_count(contacts("contacts").append_count_segment()) == 5
    pages = list(od.iter_pages(contacts("contacts").select("lastname"), max_page_size=2))
    assert [len(p.entities) for p in pages] == [2, 2, 1]
    assert sorted(n for p in pages for n in _names(p.entities)) == [f"L{i}" for i in range(5)]

    one = od.get_entity(od.entity_uri("contacts", ids[3]).select("lastname"))
    assert one.get_value("lastname") == "L3" and one.etag.startswith('W/"')
    by_key = od.get_entity(od.entity_uri("contacts", {"emailaddress1": "c4@x.test"}))
    assert by_key.get_value("contactid") == ids[4]

    row = od.get_entity(
        od.entity_uri("contacts", ids[0])
        .select("lastname")
        .expand("parentcustomerid_account($select=name)")
    )
    assert row.get_navigation_link("parentcustomerid_account").inline_entity.as_dict() == {
        "name": "Acme",
        "accountid": account,
    }
    acme = od.get_entity(
        od.entity_uri("accounts", account)
        .select("name")
        .expand("contact_customer_accounts($select=lastname;$orderby=lastname desc)")
    )
    children = acme.get_navigation_link("contact_customer_accounts").inline_entity_set
    assert _names(children.entities) == ["L1", "L0"]
    related = od.entity_uri("accounts", account).append_navigation_segment(
        "contact_customer_accounts"
    )
    assert sorted(_names(od.get_entity_set(related).entities)) == ["L0", "L1"]

    lastname = od.entity_uri("contacts", ids[2]).append_property_segment("lastname")
    assert od.get_property_value(lastname) == "L2"
    assert od.get_value(lastname.copy().append_value_segment()).content == b"L2"

    grouped = od.get_entity_set(
        contacts("contacts").apply("groupby((firstname),aggregate($count as n))")
    )
    assert {e.get_value("firstname"): e.get_value("n") for e in grouped.entities} == {
        "Even": 3,
        "Odd": 2,
    }
    annotated = od.get_entity(
        od.entity_uri("contacts", ids[0]).select("_parentcustomerid_value"),
        include_annotations="*",
    )
    terms = {a.term: a.value for a in annotated.get_property("_parentcustomerid_value").annotations}
    assert terms["OData.Community.Display.V1.FormattedValue"] == "Acme"
    assert terms["Microsoft.Dynamics.CRM.lookuplogicalname"] == "account"

    with pytest.raises(ODataClientError) as missing:
        od.get_entity(od.entity_uri("contacts", uuid.UUID(int=7)))
    assert missing.value.status_code == 404
    with pytest.raises(ODataClientError) as bad:
        od.get_entity_set(contacts("contacts").filter("nosuch eq 1"))
    # Dataverse's OData parser errors carry the code 0x0.
    assert (bad.value.status_code, bad.value.error_code) == (400, "0x0")
    assert "nosuch" in bad.value.error_message


def test_writes(fresh: Running, od: EdmEnabledODataClient) -> None:
    fresh.emulator.configure({"alternate_keys": {"contacts": [["emailaddress1"]]}})
    account, ids = _seed(od)
    root = od.service_root
    assert (
        od.update_entity(od.entity_uri("contacts", ids[2]), {"firstname": "P"}).status_code == 204
    )
    prop = od.entity_uri("contacts", ids[2]).append_property_segment("lastname")
    assert od.update_property(prop, "Two").status_code == 204
    two = od.get_entity(od.entity_uri("contacts", ids[2]).select("firstname,lastname"))
    assert (two.get_value("firstname"), two.get_value("lastname")) == ("P", "Two")

    # PATCH by an alternate key that finds no row creates one (upsert).
    created = od.update_entity(
        od.entity_uri("contacts", {"emailaddress1": "new@x.test"}), {"lastname": "Upserted"}
    )
    assert created.status_code == 204
    new = od.get_entity(od.entity_uri("contacts", {"emailaddress1": "new@x.test"}))
    assert new.get_value("lastname") == "Upserted"

    stale_tag = two.etag
    od.update_entity(od.entity_uri("contacts", ids[2]), {"firstname": "Q"})
    with pytest.raises(ODataClientError) as stale:
        od.delete_entity(od.entity_uri("contacts", ids[2]), etag=stale_tag)
    assert stale.value.status_code == 412
    assert "RowVersion" in stale.value.error_message
    current = od.get_entity(od.entity_uri("contacts", ids[2])).etag
    assert od.delete_entity(od.entity_uri("contacts", ids[2]), etag=current).status_code == 204

    related = od.entity_uri("accounts", account).append_navigation_segment(
        "contact_customer_accounts"
    )
    od.add_reference(related, f"{root}/contacts({ids[3]})")
    refs = od.get_references(related)
    assert sorted(refs) == sorted(f"{root}/contacts({i})" for i in (ids[0], ids[1], ids[3]))
    od.remove_reference(related, f"{root}/contacts({ids[0]})")
    single = od.entity_uri("contacts", ids[4]).append_navigation_segment("parentcustomerid_account")
    od.set_reference(single, f"{root}/accounts({account})")
    assert sorted(od.get_references(related)) == sorted(
        f"{root}/contacts({i})" for i in (ids[1], ids[3], ids[4])
    )

    made = od.invoke_action(
        od.entity_set_uri("contacts").append_action_call_segment(
            "Microsoft.Dynamics.CRM.CreateMultiple"
        ),
        {"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.contact", "lastname": "Bulk"}]},
    ).value
    (bulk,) = made["Ids"]
    assert od.get_entity(od.entity_uri("contacts", uuid.UUID(bulk))).get_value("lastname") == (
        "Bulk"
    )


def test_batches(od: EdmEnabledODataClient) -> None:
    _seed(od)
    batch = od.batch()
    batch.add_retrieve(od.entity_set_uri("contacts").select("lastname").filter("lastname eq 'L0'"))
    changes = batch.add_changeset()
    new_account = changes.create("accounts", {"name": "Batch Co"})
    changes.create(
        "contacts", {"lastname": "InBatch", "parentcustomerid_account@odata.bind": new_account.ref}
    )
    answer = od.execute_batch(batch)
    assert (answer.status_code, [p.status_code for p in answer]) == (200, [200, 204, 204])
    (found,) = od.get_entity_set(
        od.entity_set_uri("contacts")
        .select("lastname")
        .filter("lastname eq 'InBatch'")
        .expand("parentcustomerid_account($select=name)")
    ).entities
    assert found.get_navigation_link("parentcustomerid_account").inline_entity.get_value(
        "name"
    ) == ("Batch Co")

    # A changeset is atomic; without continue-on-error the batch stops at the failure
    # and answers with its status (execute-batch-operations-using-web-api.md).
    failing = od.batch()
    doomed = failing.add_changeset()
    doomed.create("accounts", {"name": "Never"})
    doomed.create("contacts", {"nosuchcolumn": 1})
    answer = od.execute_batch(failing)
    assert (answer.status_code, [p.status_code for p in answer]) == (400, [400])
    nothing = od.get_entity_set(od.entity_set_uri("accounts").filter("name eq 'Never'"))
    assert nothing.entities == []

    going_on = od.batch(continue_on_error=True)
    going_on.add_retrieve(od.entity_set_uri("contacts").filter("nosuch eq 1"))
    going_on.add_retrieve(od.entity_set_uri("contacts").select("lastname").top(1))
    answer = od.execute_batch(going_on)
    assert (answer.status_code, [p.status_code for p in answer]) == (200, [400, 200])


def test_change_tracking(od: EdmEnabledODataClient) -> None:
    _, ids = _seed(od)
    first = od.get_entity_set(od.entity_set_uri("contacts").select("lastname"), track_changes=True)
    assert len(first.entities) == 5 and first.delta_link
    od.create_entity("contacts", {"lastname": "Later"})
    od.update_entity(od.entity_uri("contacts", ids[0]), {"lastname": "L0b"})
    od.delete_entity(od.entity_uri("contacts", ids[4]))
    delta = od.get_delta(first.delta_link)
    assert sorted(e.get_value("lastname") for e in delta.entities) == ["L0b", "Later"]
    assert [(d.id, d.reason) for d in delta.deleted_entities] == [(str(ids[4]), "deleted")]
    assert delta.delta_link and delta.delta_link != first.delta_link
    quiet = od.get_delta(delta.delta_link)
    assert (quiet.entities, quiet.deleted_entities) == ([], [])


def test_async_client(fresh: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(fresh.ca_file))

    async def run() -> list[str]:
        transport = AsyncHttpxTransport(auth=_auth(fresh))
        client = AsyncEdmEnabledODataClient(
            f"{fresh.url}/api/data/v9.2", transport, odata_version="4.0"
        )
        try:
            await client.create_entity("leads", {"lastname": "Async"})
            page = await client.get_entity_set(client.entity_set_uri("leads").select("lastname"))
            return _names(page.entities)
        finally:
            await transport._client.aclose()

    assert asyncio.run(run()) == ["Async"]
