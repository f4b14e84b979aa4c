"""A second third-party Dataverse client from PyPI against the emulator over HTTPS,
unpatched: ``dynamics-client`` (M. Lamppu; pinned in the ``test`` extra), sync and async.
Only where it connects (the emulator's API and token URLs) and which certificate it
trusts (``SSL_CERT_FILE``, read by httpx) are ours.

Its documented surface: metadata (``functions.retrieve_all_entities``/``retrieve_entity``
with the integer ``EntityFilters`` it sends, ``functions.whoami``), queries (``select``,
``filter`` with its ``ftr`` operators and query functions, ``orderby``, ``top``,
``count``, paging by ``pagesize`` and ``pagination_rules``, ``expand`` single- and
collection-valued with nested options, ``pre_expand``, ``apply`` with ``apl``,
``fetch_xml`` from its ``FetchXMLBuilder``, annotations, alternate keys as ``row_id``),
writes (``post``, ``patch`` with its ``If-Match: *``, ``delete``, ``add_ref_to_property``)
and its error classes. It has no batches (a TODO in its source) and keeps no
``@odata.deltaLink``, so there is no change tracking to run; its ``actions`` and most
other ``functions`` are for quotes, orders, e-mail and calendars, tables the emulator
does not have. Query functions it offers that the emulator does not run (fiscal
periods, hierarchies) get Dataverse's unknown-function error, checked below.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from dynamics import DynamicsClient, apl, ftr
from dynamics.client.aio import DynamicsClient as AsyncDynamicsClient
from dynamics.enums import EntityFilter
from dynamics.exceptions import NotFound, ParseError
from dynamics.fetchxml import FetchXMLBuilder
from emulator_https import Running


def _args(run: Running) -> dict[str, str]:
    return {
        "api_url": f"{run.url}/api/data/v9.2",
        "token_url": f"{run.url}/dc-tenant/oauth2/v2.0/token",
        "client_id": "dc-app",
        "client_secret": "secret",
        "scope": f"{run.url}/.default",
    }


@pytest.fixture
def dc(fresh: Running, monkeypatch: pytest.MonkeyPatch) -> Iterator[DynamicsClient]:
    monkeypatch.setenv("SSL_CERT_FILE", str(fresh.ca_file))
    client = DynamicsClient(**_args(fresh), cache_token=False)
    yield client
    client._oauth_client.close()


def _create(dc: DynamicsClient, table: str, data: dict[str, object]) -> dict[str, object]:
    dc.reset_query()
    dc.table = table
    return dc.post(data=data).data


def _seed(dc: DynamicsClient) -> tuple[str, list[str]]:
    account = str(_create(dc, "accounts", {"name": "Acme"})["accountid"])
    ids = []
    for i in range(7):
        body: dict[str, object] = {
            "lastname": f"L{i}",
            "firstname": "Odd" if i % 2 else "Even",
            "emailaddress1": f"c{i}@x.test",
        }
        if i < 3:
            body["parentcustomerid_account@odata.bind"] = f"/accounts({account})"
        ids.append(str(_create(dc, "contacts", body)["contactid"]))
    return account, ids


def test_metadata_and_whoami(fresh: Running, dc: DynamicsClient) -> None:
    (me,) = dc.functions.whoami().data
    assert me["UserId"] and me["BusinessUnitId"] and me["OrganizationId"]
    (only,) = dc.functions.retrieve_all_entities(EntityFilter.ENTITY).data
    names = {e["LogicalName"]: e for e in only["EntityMetadata"]}
    assert {"lead", "contact", "account", "opportunity"} <= set(names)
    assert "Attributes" not in names["contact"]
    (full,) = dc.functions.retrieve_all_entities(EntityFilter.ATTRIBUTES).data
    contact = next(e for e in full["EntityMetadata"] if e["LogicalName"] == "contact")
    assert {"lastname", "parentcustomerid"} <= {a["LogicalName"] for a in contact["Attributes"]}
    # Its ALL is 16; Dataverse's EntityFilters.All is 15 and 16 is no combination of
    # its flags, so the emulator refuses it (Dataverse's wording undocumented).
    with pytest.raises(ParseError, match="EntityFilters '16'"):
        dc.functions.retrieve_all_entities(EntityFilter.ALL)
    (one,) = dc.functions.retrieve_entity(
        contact["MetadataId"], "contact", EntityFilter.ATTRIBUTES
    ).data
    assert one["EntityMetadata"]["LogicalName"] == "contact"
    assert "lastname" in {a["LogicalName"] for a in one["EntityMetadata"]["Attributes"]}
    with pytest.raises(NotFound):
        dc.functions.retrieve_entity(contact["MetadataId"], "widget", EntityFilter.ENTITY)


def test_queries(fresh: Running, dc: DynamicsClient) -> None:
    account, ids = _seed(dc)
    dc.reset_query()
    dc.table = "contacts"
    dc.select = ["lastname"]
    dc.filter = [ftr.eq("firstname", "Odd"), ftr.in_("lastname", ["L1", "L3", "L4"])]
    dc.orderby = {"lastname": "desc"}
    assert [r["lastname"] for r in dc.get().data] == ["L3", "L1"]

    dc.reset_query()
    dc.table = "contacts"
    dc.select = ["lastname"]
    dc.count = True
    dc.top = 2
    answer = dc.get()
    # The client sends Prefer: odata.maxpagesize on every GET, and Dataverse ignores
    # $top combined with it (webapi/query/page-results.md, in ../shared/reference).
    assert (len(answer.data), answer.count) == (7, 7)

    dc.reset_query()
    dc.table = "contacts"
    dc.select = ["lastname"]
    dc.pagesize = 3
    paged = dc.get(pagination_rules={"pages": -1})
    assert sorted(r["lastname"] for r in paged.data) == [f"L{i}" for i in range(7)]
    first_page = dc.get(pagination_rules={"pages": 0})
    assert len(first_page.data) == 3 and first_page.next_link
    dc.pagesize = 5000

    dc.reset_query()
    dc.table = "accounts"
    dc.select = ["name"]
    dc.expand = {
        "contact_customer_accounts": {
            "select": ["lastname"],
            "filter": [ftr.ne("lastname", "L1")],
            "orderby": {"lastname": "desc"},
            "top": 5,
        }
    }
    (acme,) = dc.get().data
    assert [c["lastname"] for c in acme["contact_customer_accounts"]] == ["L2", "L0"]

    dc.reset_query()
    dc.table = "contacts"
    dc.select = ["lastname"]
    dc.filter = [ftr.eq("lastname", "L0")]
    dc.expand = {"parentcustomerid_account": {"select": ["name"]}}
    (row,) = dc.get().data
    assert row["parentcustomerid_account"]["name"] == "Acme"

    dc.reset_query()
    dc.table = "accounts"
    dc.row_id = account
    dc.pre_expand = "contact_customer_accounts"
    dc.select = ["lastname"]
    assert sorted(r["lastname"] for r in dc.get().data) == ["L0", "L1", "L2"]

    dc.reset_query()
    dc.table = "contacts"
    dc.show_annotations = True
    dc.select = ["lastname", "_parentcustomerid_value"]
    dc.filter = [ftr.eq("lastname", "L0")]
    (annotated,) = dc.get().data
    assert annotated["_parentcustomerid_value@OData.Community.Display.V1.FormattedValue"] == "Acme"
    assert annotated["_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == (
        "account"
    )
    assert ids


def test_date_functions(fresh: Running, dc: DynamicsClient) -> None:
    _seed(dc)

    def count(*filters: str) -> int:
        dc.reset_query()
        dc.table = "contacts"
        dc.select = ["lastname"]
        dc.filter = list(filters)
        return len(dc.get(not_found_ok=True).data)

    # Every row was created just now.
    for now in (
        ftr.today("createdon"),
        ftr.this_week("createdon"),
        ftr.this_month("createdon"),
        ftr.this_year("createdon"),
        ftr.last_7_days("createdon"),
        ftr.last_x_days("createdon", 1),
        ftr.last_x_weeks("createdon", 1),
        ftr.last_x_months("createdon", 1),
        ftr.last_x_years("createdon", 1),
        ftr.last_x_hours("createdon", 1),
    ):
        assert count(now) == 7, now
    for never in (
        ftr.yesterday("createdon"),
        ftr.last_week("createdon"),
        ftr.next_week("createdon"),
        ftr.last_month("createdon"),
        ftr.next_month("createdon"),
        ftr.last_year("createdon"),
        ftr.next_year("createdon"),
        ftr.older_than_x_minutes("createdon", 5),
        ftr.older_than_x_days("createdon", 1),
        ftr.older_than_x_months("createdon", 1),
        ftr.next_x_years("createdon", 1) + " and " + ftr.lt("createdon", "2000-01-01"),
    ):
        assert count(never) == 0, never
    for unknown in (ftr.in_fiscal_year("createdon", 2026), ftr.above("contactid", "x")):
        with pytest.raises(ParseError, match="unknown function"):
            count(unknown)


def test_aggregates_and_fetchxml(fresh: Running, dc: DynamicsClient) -> None:
    _seed(dc)
    dc.reset_query()
    dc.table = "contacts"
    distinct = apl.aggregate(col_="lastname", with_="countdistinct", as_="n")
    dc.apply = apl.groupby(["firstname"], distinct)
    assert {r["firstname"]: r["n"] for r in dc.get().data} == {"Even": 4, "Odd": 3}
    # `with count` is offered by the client but is no OData aggregate method: refused.
    dc.apply = apl.groupby(["firstname"], apl.aggregate(col_="lastname", with_="count", as_="n"))
    with pytest.raises(ParseError):
        dc.get()

    fetch = FetchXMLBuilder(top=3)
    entity = fetch.add_entity(name="contact")
    entity.add_attribute(name="lastname")
    entity.order(attribute="lastname", descending=True)
    entity.filter().add_condition(attribute="firstname", operator="eq", value="Even")
    dc.reset_query()
    dc.table = "contacts"
    dc.fetch_xml = fetch.build()
    assert [r["lastname"] for r in dc.get().data] == ["L6", "L4", "L2"]


def test_writes_keys_and_errors(fresh: Running, dc: DynamicsClient) -> None:
    fresh.emulator.configure({"alternate_keys": {"contacts": [["emailaddress1"]]}})
    account, ids = _seed(dc)
    dc.reset_query()
    dc.table = "contacts"
    dc.row_id = "emailaddress1='c5@x.test'"
    dc.select = ["lastname"]
    (by_key,) = dc.get().data
    assert (by_key["contactid"], by_key["lastname"]) == (ids[5], "L5")

    dc.reset_query()
    dc.table = "contacts"
    dc.row_id = ids[5]
    dc.select = ["lastname", "firstname"]
    updated = dc.patch(data={"lastname": "Five"}).data
    assert (updated["lastname"], updated["firstname"]) == ("Five", "Odd")

    # Its PATCH sends If-Match: *, so a missing row is a 404, never an upsert.
    dc.reset_query()
    dc.table = "contacts"
    dc.row_id = "00000000-0000-0000-0000-000000000009"
    with pytest.raises(NotFound):
        dc.patch(data={"lastname": "Ghost"})

    dc.reset_query()
    dc.table = "accounts"
    dc.row_id = account
    dc.add_ref_to_property = "contact_customer_accounts"
    dc.post(data={"@odata.id": f"{fresh.url}/api/data/v9.2/contacts({ids[6]})"})
    dc.reset_query()
    dc.table = "accounts"
    dc.row_id = account
    dc.pre_expand = "contact_customer_accounts"
    dc.select = ["lastname"]
    assert sorted(r["lastname"] for r in dc.get().data) == ["L0", "L1", "L2", "L6"]

    dc.reset_query()
    dc.table = "contacts"
    dc.row_id = ids[0]
    dc.delete()
    with pytest.raises(NotFound, match="Does Not Exist"):
        dc.get()
    dc.reset_query()
    dc.table = "contacts"
    dc.filter = [ftr.eq("lastname", "nobody")]
    with pytest.raises(NotFound):
        dc.get()
    assert dc.get(not_found_ok=True).data == []
    dc.reset_query()
    dc.table = "contacts"
    with pytest.raises(ParseError):
        dc.post(data={"nosuchcolumn": 1})


def test_async_client(fresh: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(fresh.ca_file))

    async def run() -> list[str]:
        client = AsyncDynamicsClient(**_args(fresh), cache_token=False)
        try:
            client.table = "leads"
            await client.post(data={"lastname": "Async", "emailaddress1": "a@x.test"})
            client.reset_query()
            client.table = "leads"
            client.select = ["lastname"]
            client.filter = [ftr.startswith("lastname", "Asy")]
            return [r["lastname"] for r in (await client.get()).data]
        finally:
            await client._oauth_client.aclose()

    assert asyncio.run(run()) == ["Async"]
