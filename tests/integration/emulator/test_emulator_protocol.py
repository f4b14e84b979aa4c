# ruff: noqa: E501  (Dataverse messages are compared verbatim, on one line)
"""Protocol tests: the emulator in-process over httpx.ASGITransport, exact statuses, codes, messages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from crmsync.emulator import create_app
from crmsync.emulator.app import ConnectionCut, Emulator

API = "/api/data/v9.2/"


class Dv:
    """A tiny Dataverse client bound to one application user."""

    def __init__(self, client: httpx.AsyncClient, token: str) -> None:
        self.c = client
        self.h = {
            "Authorization": f"Bearer {token}",
            "OData-Version": "4.0",
            "Accept": "application/json",
        }

    async def req(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        url = path if path.startswith("http") else API + path
        return await self.c.request(method, url, headers={**self.h, **(headers or {})}, **kw)

    async def create(self, entity_set: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
        r = await self.req(
            "POST", entity_set, {"Prefer": "return=representation", **headers}, json=body
        )
        assert r.status_code == 201, r.text
        return r.json()


async def token(client: httpx.AsyncClient, client_id: str = "app-1") -> str:
    r = await client.post(
        "/tenant-1/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": "s3cret",
            "scope": "https://org/.default",
        },
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


@pytest.fixture
def emulator() -> Emulator:
    return create_app()


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=emulator), base_url="https://org.test"
    ) as c:
        yield c


@pytest.fixture
async def dv(client: httpx.AsyncClient) -> Dv:
    return Dv(client, await token(client))


def error(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()["error"]
    return r.status_code, body["code"], body["message"]


# -- authentication -----------------------------------------------------------------


async def test_api_needs_a_valid_bearer_token(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    assert (await client.get(API + "leads")).status_code == 401
    r = await client.get(API + "leads", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer authorization_uri=")
    await client.put("/_emulator/config", json={"token_lifetime_s": 1})
    tok = await token(client)
    assert (
        await client.get(API + "leads", headers={"Authorization": f"Bearer {tok}"})
    ).status_code == 200
    grant = emulator.tokens.grants[tok]
    emulator.tokens.grants[tok] = type(grant)(grant.client_id, grant.user_id, 0)  # expire it now
    assert (
        await client.get(API + "leads", headers={"Authorization": f"Bearer {tok}"})
    ).status_code == 401


async def test_token_endpoint_errors_and_allowed_clients(client: httpx.AsyncClient) -> None:
    r = await client.post("/t/oauth2/v2.0/token", data={"grant_type": "password", "client_id": "a"})
    assert (r.status_code, r.json()["error"]) == (400, "unsupported_grant_type")
    r = await client.post(
        "/t/oauth2/v2.0/token", data={"grant_type": "client_credentials", "client_id": "a"}
    )
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
    await client.put("/_emulator/config", json={"clients": {"known": "right"}})
    form = {"grant_type": "client_credentials", "client_id": "known", "client_secret": "wrong"}
    assert (await client.post("/t/oauth2/v2.0/token", data=form)).status_code == 401
    form["client_secret"] = "right"
    r = await client.post("/t/oauth2/v2.0/token", data=form)
    assert r.status_code == 200
    assert r.json()["token_type"] == "Bearer" and r.json()["expires_in"] == 3600
    oidc = (await client.get("/t/v2.0/.well-known/openid-configuration")).json()
    assert oidc["token_endpoint"] == "https://org.test/t/oauth2/v2.0/token"


async def test_each_client_is_its_own_application_user(client: httpx.AsyncClient) -> None:
    a = Dv(client, await token(client, "app-a"))
    b = Dv(client, await token(client, "app-b"))
    who_a = (await a.req("GET", "WhoAmI")).json()["UserId"]
    who_b = (await b.req("GET", "WhoAmI")).json()["UserId"]
    assert who_a != who_b
    lead = await a.create("leads", {"lastname": "L"})
    assert lead["_createdby_value"] == lead["_modifiedby_value"] == who_a
    r = await b.req(
        "PATCH",
        f"leads({lead['leadid']})",
        {"Prefer": "return=representation"},
        json={"firstname": "F"},
    )
    assert r.json()["_modifiedby_value"] == who_b and r.json()["_createdby_value"] == who_a
    users = (await a.req("GET", "systemusers?$select=fullname")).json()["value"]
    assert {u["systemuserid"] for u in users} == {who_a, who_b}


# -- records --------------------------------------------------------------------------


async def test_create_without_representation_is_204_with_entity_id(dv: Dv) -> None:
    r = await dv.req("POST", "accounts", json={"name": "Acme"})
    assert r.status_code == 204 and r.content == b""
    entity_id = r.headers["OData-EntityId"]
    assert entity_id.startswith("https://org.test/api/data/v9.2/accounts(")
    key = entity_id.split("(")[1].rstrip(")")
    got = await dv.req("GET", f"accounts({key})?$select=name")
    assert got.status_code == 200
    body = got.json()
    assert body["name"] == "Acme" and body["accountid"] == key
    assert body["@odata.etag"] == got.headers["ETag"]


async def test_create_with_representation_and_client_key(dv: Dv) -> None:
    key = str(uuid.uuid4())
    row = await dv.create(
        "leads", {"leadid": key, "firstname": "Ada", "lastname": "L", "new_synctomkto": True}
    )
    assert row["leadid"] == key
    assert row["fullname"] == "Ada L"
    assert row["@odata.etag"] == f'W/"{row["versionnumber"]}"'
    assert row["createdon"].endswith("Z") and row["modifiedon"] == row["createdon"]
    r = await dv.req("POST", "leads", json={"leadid": key})
    assert error(r) == (412, "0x80040237", "Cannot insert duplicate key.")


async def test_retrieve_missing_record_is_404(dv: Dv) -> None:
    key = str(uuid.uuid4())
    r = await dv.req("GET", f"leads({key})")
    assert error(r) == (404, "0x80040217", f"lead With Id = {key} Does Not Exist")


async def test_patch_upserts_and_etags_change_on_every_write(dv: Dv) -> None:
    key = str(uuid.uuid4())
    rep = {"Prefer": "return=representation"}
    r = await dv.req("PATCH", f"contacts({key})", rep, json={"lastname": "One"})
    assert r.status_code == 201
    first = r.json()["@odata.etag"]
    r = await dv.req("PATCH", f"contacts({key})", rep, json={"lastname": "Two"})
    assert r.status_code == 200 and r.json()["@odata.etag"] != first
    r = await dv.req("PATCH", f"contacts({key})", json={"lastname": "Three"})
    assert r.status_code == 204 and r.headers["OData-EntityId"].endswith(f"contacts({key})")
    assert r.headers["ETag"] not in (first,)


async def test_conditional_writes(dv: Dv) -> None:
    row = await dv.create("leads", {"lastname": "L"})
    key, tag = row["leadid"], row["@odata.etag"]
    missing = str(uuid.uuid4())
    r = await dv.req("PATCH", f"leads({missing})", {"If-Match": "*"}, json={"lastname": "x"})
    assert error(r) == (404, "0x80040217", f"lead With Id = {missing} Does Not Exist")
    r = await dv.req("PATCH", f"leads({key})", {"If-None-Match": "*"}, json={"lastname": "x"})
    assert error(r) == (412, "", "A record with matching key values already exists.")
    r = await dv.req("PATCH", f"leads({missing})", {"If-None-Match": "*"}, json={"lastname": "x"})
    assert r.status_code == 204
    r = await dv.req("PATCH", f"leads({key})", {"If-Match": tag}, json={"lastname": "M"})
    assert r.status_code == 204
    mismatch = (
        412,
        "",
        "The version of the existing record doesn't match the RowVersion property provided.",
    )
    r = await dv.req("PATCH", f"leads({key})", {"If-Match": tag}, json={"lastname": "N"})
    assert error(r) == mismatch
    r = await dv.req("DELETE", f"leads({key})", {"If-Match": tag})
    assert error(r) == mismatch
    current = r.headers.get("ETag") or (await dv.req("GET", f"leads({key})")).headers["ETag"]
    r = await dv.req("GET", f"leads({key})", {"If-None-Match": current})
    assert r.status_code == 304
    r = await dv.req("GET", f"leads({key})", {"If-None-Match": "null"})
    assert r.status_code == 200
    assert (await dv.req("DELETE", f"leads({key})", {"If-Match": current})).status_code == 204
    assert (await dv.req("DELETE", f"leads({key})")).status_code == 404


async def test_lookups_bind_and_read_back_as_value(dv: Dv) -> None:
    account = await dv.create("accounts", {"name": "Acme"})
    aid = account["accountid"]
    contact = await dv.create(
        "contacts", {"lastname": "C", "parentcustomerid_account@odata.bind": f"/accounts({aid})"}
    )
    assert contact["_parentcustomerid_value"] == aid
    opp = await dv.create(
        "opportunities", {"name": "Deal", "parentaccountid@odata.bind": f"accounts({aid})"}
    )
    assert opp["_parentaccountid_value"] == aid
    r = await dv.req(
        "PATCH",
        f"contacts({contact['contactid']})",
        {"Prefer": "return=representation"},
        json={"parentcustomerid_account@odata.bind": None},
    )
    assert r.json()["_parentcustomerid_value"] is None
    ghost = str(uuid.uuid4())
    r = await dv.req(
        "POST", "contacts", json={"parentcustomerid_account@odata.bind": f"/accounts({ghost})"}
    )
    assert error(r) == (404, "0x80040217", f"account With Id = {ghost} Does Not Exist")
    r = await dv.req("POST", "contacts", json={"nope@odata.bind": f"/accounts({aid})"})
    assert error(r)[:2] == (400, "0x80048d19")
    r = await dv.req("POST", "contacts", json={"_parentcustomerid_value": aid})
    assert error(r)[:2] == (400, "0x0")


# -- validation failures --------------------------------------------------------------


async def test_string_too_long(dv: Dv) -> None:
    r = await dv.req("POST", "leads", json={"emailaddress1": "x" * 101})
    assert error(r) == (
        400,
        "0x80044331",
        "A validation error occurred.  The length of the 'emailaddress1' attribute of the 'lead' entity exceeded the maximum allowed length of '100'.",
    )
    r = await dv.req("POST", "accounts", json={"name": "n" * 161})
    assert error(r)[1] == "0x80044331" and "'name' attribute of the 'account'" in error(r)[2]
    assert (await dv.req("POST", "opportunities", json={"name": "n" * 300})).status_code == 204


async def test_invalid_choice(dv: Dv) -> None:
    r = await dv.req("POST", "leads", json={"leadqualitycode": 5})
    assert error(r) == (
        400,
        "0x8004431a",
        "A validation error occurred. The value 5 of 'leadqualitycode' on record of type 'lead' is outside the valid range. Accepted Values: 1,2,3.",
    )


async def test_duplicate_detection_only_when_enabled_and_requested(
    client: httpx.AsyncClient, dv: Dv
) -> None:
    await dv.create("leads", {"emailaddress1": "dup@example.com"})
    ask = {"MSCRM.SuppressDuplicateDetection": "false"}
    assert (
        await dv.req("POST", "leads", ask, json={"emailaddress1": "dup@example.com"})
    ).status_code == 204
    await client.put("/_emulator/config", json={"duplicate_detection": True})
    assert (
        await dv.req("POST", "leads", json={"emailaddress1": "DUP@example.com"})
    ).status_code == 204
    r = await dv.req("POST", "leads", ask, json={"emailaddress1": "Dup@Example.com"})
    assert error(r) == (
        500,
        "0x80040333",
        "A record was not created or updated because a duplicate of the current record already exists.",
    )
    assert (
        await dv.req("POST", "contacts", ask, json={"emailaddress1": "dup@example.com"})
    ).status_code == 204


async def test_denied_entity_set_is_privilege_error(client: httpx.AsyncClient, dv: Dv) -> None:
    await client.put("/_emulator/config", json={"denied_entity_sets": ["opportunities"]})
    user = (await dv.req("GET", "WhoAmI")).json()["UserId"]
    r = await dv.req("GET", "opportunities")
    status, code, message = error(r)
    assert (status, code) == (403, "0x80040220")
    assert message.startswith(f"Principal user (Id={user}, type=8")
    assert "is missing prvReadOpportunity privilege" in message
    assert message.endswith("on OTC=3 for entity 'opportunity'.")
    r = await dv.req("POST", "opportunities", json={"name": "x"})
    assert "prvCreateOpportunity" in error(r)[2]
    assert (await dv.req("GET", "accounts")).status_code == 200


async def test_unknown_names_and_malformed_payloads(dv: Dv) -> None:
    r = await dv.req("GET", "accounts?$select=Name")
    assert error(r) == (
        400,
        "0x0",
        "Could not find a property named 'Name' on type 'Microsoft.Dynamics.CRM.account'.",
    )
    r = await dv.req("POST", "accounts", json={"Name": "x"})
    assert error(r) == (
        400,
        "0x0",
        "An error occurred while validating input parameters: Microsoft.Crm.CrmException: Invalid property 'Name' was found in entity 'Microsoft.Dynamics.CRM.account'.",
    )
    r = await dv.req("GET", "Account")
    assert error(r) == (404, "0x8006088a", "Resource not found for the segment 'Account'.")
    r = await dv.req(
        "POST", "accounts", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    status, code, message = error(r)
    assert (status, code) == (400, "0x80048d19")
    assert message.startswith(
        "Error identified in Payload provided by the user for Entity :'accounts'  ---->  InnerException : "
    )
    r = await dv.req("POST", "accounts", json=[1, 2])
    assert error(r)[:2] == (400, "0x80048d19")
    r = await dv.req("POST", "leads", json={"new_synctomkto": "yes"})
    assert error(r)[:2] == (400, "0x80048d19")
    key = str(uuid.uuid4())
    r = await dv.req("PUT", f"accounts({key})", json={})
    assert error(r) == (
        404,
        "",
        f"No HTTP resource was found that matches the request URI 'https://org.test/api/data/v9.2/accounts({key})'.",
    )
    r = await dv.req("GET", "accounts(emailaddress1='a@b.c')")
    assert error(r)[:2] == (400, "0x80060891")
    r = await dv.req("GET", "accounts(notakey)")
    assert error(r)[0] == 400


# -- queries ----------------------------------------------------------------------------


async def _seed(emulator: Emulator, n: int, user: str = "u") -> list[str]:
    """Bulk-load rows directly (fast), the way a pre-populated tenant looks."""
    store = emulator.store
    keys = []
    store.begin()
    for i in range(n):
        key = str(uuid.UUID(int=i + 1))
        keys.append(key)
        store.put(
            "leads",
            {
                "leadid": key,
                "lastname": f"Last{i:05d}",
                "emailaddress1": f"p{i}@{'even' if i % 2 == 0 else 'odd'}.example",
                "leadqualitycode": 1 + i % 3,
                "createdon": "2024-01-01T00:00:00Z",
                "modifiedon": "2024-01-01T00:00:00Z",
                "_createdby_value": user,
                "_modifiedby_value": user,
                "versionnumber": store.next_version(),
            },
        )
    store.commit()
    return keys


async def test_query_select_filter_orderby_top_count(dv: Dv, emulator: Emulator) -> None:
    await _seed(emulator, 30)
    r = await dv.req(
        "GET",
        "leads?$select=lastname,leadqualitycode&$filter=endswith(emailaddress1,'even.example') and leadqualitycode ne 2&$orderby=lastname desc&$top=3&$count=true",
    )
    assert r.status_code == 200
    body = r.json()
    assert (
        body["@odata.context"]
        == "https://org.test/api/data/v9.2/$metadata#leads(lastname,leadqualitycode,leadid)"
    )
    assert [row["lastname"] for row in body["value"]] == ["Last00026", "Last00024", "Last00020"]
    assert set(body["value"][0]) == {"@odata.etag", "lastname", "leadqualitycode", "leadid"}
    assert body["@odata.count"] == 10
    assert "@odata.nextLink" not in body


async def test_paging_with_maxpagesize_and_opaque_skiptoken(dv: Dv, emulator: Emulator) -> None:
    keys = await _seed(emulator, 25)
    prefer = {"Prefer": "odata.maxpagesize=10"}
    seen: list[str] = []
    r = await dv.req(
        "GET", "leads?$select=lastname&$top=3", prefer
    )  # $top ignored with maxpagesize
    pages = 0
    while True:
        assert r.status_code == 200
        assert r.headers["Preference-Applied"] == "odata.maxpagesize=10"
        body = r.json()
        seen += [row["leadid"] for row in body["value"]]
        pages += 1
        link = body.get("@odata.nextLink")
        if not link:
            break
        assert "$skiptoken=%3Ccookie%20pagenumber%3D%22" in link and "$select=lastname" in link
        r = await dv.req("GET", link, prefer)
    assert pages == 3 and seen == sorted(keys)


async def test_paging_with_orderby_and_filter(dv: Dv, emulator: Emulator) -> None:
    await _seed(emulator, 12)
    prefer = {"Prefer": "odata.maxpagesize=4"}
    r = await dv.req(
        "GET", "leads?$select=lastname&$orderby=lastname desc&$filter=leadqualitycode ge 1", prefer
    )
    names: list[str] = []
    while True:
        names += [row["lastname"] for row in r.json()["value"]]
        link = r.json().get("@odata.nextLink")
        if not link:
            break
        r = await dv.req("GET", link, prefer)
    assert names == sorted(names, reverse=True) and len(names) == 12


async def test_page_cap_is_5000_and_skip_is_rejected(dv: Dv, emulator: Emulator) -> None:
    await _seed(emulator, 5003)
    r = await dv.req("GET", "leads?$select=lastname", {"Prefer": "odata.maxpagesize=9000"})
    body = r.json()
    assert len(body["value"]) == 5000 and "@odata.nextLink" in body
    r = await dv.req("GET", body["@odata.nextLink"])
    assert len(r.json()["value"]) == 3
    r = await dv.req("GET", "leads?$count=true&$top=1")
    assert r.json()["@odata.count"] == 5000
    assert (await dv.req("GET", "leads/$count")).text == "5000"
    r = await dv.req("GET", "leads?$skip=10")
    assert error(r) == (400, "0x80060888", "The query parameter $skip is not supported")


async def test_count_segment_counts_what_filter_keeps(dv: Dv) -> None:
    """/$count counts after $filter (OData URL conventions 11.2.10; inferred for
    Dataverse, whose page shows the bare form): it answered the whole table before."""
    for last, first in [("Ames", "Ann"), ("Baker", "Ann"), ("Cole", None)]:
        await dv.create("leads", {"lastname": last, "firstname": first})
    assert (await dv.req("GET", "leads/$count")).text == "3"
    r = await dv.req("GET", "leads/$count?$filter=firstname eq 'Ann'")
    assert (r.status_code, r.text) == (200, "2")
    r = await dv.req("GET", "leads/$count?$filter=firstname eq null and lastname ne 'x'")
    assert r.text == "1"
    r = await dv.req("GET", "leads/$count?$filter=nosuch eq 1")
    assert r.status_code == 400 and "nosuch" in error(r)[2]
    r = await dv.req("GET", "leads/$count?$top=1")
    assert error(r) == (400, "0x80060888", "The query parameter $top is not supported")


# -- change tracking --------------------------------------------------------------------


async def test_change_tracking_delta_rows_then_deletes(dv: Dv) -> None:
    a = await dv.create("leads", {"lastname": "A"})
    b = await dv.create("leads", {"lastname": "B"})
    r = await dv.req("GET", "leads?$select=lastname", {"Prefer": "odata.track-changes"})
    assert r.headers["Preference-Applied"] == "odata.track-changes"
    first = r.json()
    assert {row["lastname"] for row in first["value"]} == {"A", "B"}
    delta = first["@odata.deltaLink"]
    assert "$deltatoken=" in delta and "$select=lastname" in delta
    empty = (await dv.req("GET", delta)).json()
    assert empty["value"] == [] and empty["@odata.context"].endswith("/$delta")
    c = await dv.create("leads", {"lastname": "C"})
    await dv.req("PATCH", f"leads({a['leadid']})", json={"lastname": "A2"})
    await dv.req("DELETE", f"leads({b['leadid']})")
    gone = await dv.create("leads", {"lastname": "brief"})
    await dv.req("DELETE", f"leads({gone['leadid']})")
    body = (await dv.req("GET", delta)).json()
    rows = body["value"]
    assert [r.get("lastname") for r in rows[:2]] == ["C", "A2"]
    assert rows[0]["leadid"] == c["leadid"]
    assert rows[2:] == [
        {
            "@odata.context": "https://org.test/api/data/v9.2/$metadata#leads/$deletedEntity",
            "id": b["leadid"],
            "reason": "deleted",
        },
        {
            "@odata.context": "https://org.test/api/data/v9.2/$metadata#leads/$deletedEntity",
            "id": gone["leadid"],
            "reason": "deleted",
        },
    ]
    again = (await dv.req("GET", body["@odata.deltaLink"])).json()
    assert again["value"] == []


async def test_delta_pages_when_many_changes(dv: Dv, emulator: Emulator) -> None:
    r = await dv.req("GET", "leads", {"Prefer": "odata.track-changes"})
    delta = r.json()["@odata.deltaLink"]
    keys = await _seed(emulator, 7)
    for key in keys[:3]:
        await dv.req("DELETE", f"leads({key})")
    prefer = {"Prefer": "odata.maxpagesize=4"}
    r = await dv.req("GET", delta, prefer)
    entries: list[dict[str, Any]] = []
    while True:
        entries += r.json()["value"]
        link = r.json().get("@odata.nextLink")
        if not link:
            break
        r = await dv.req("GET", link, prefer)
    assert [e["leadid"] for e in entries if "leadid" in e] == keys[3:]
    assert [e["id"] for e in entries if "id" in e] == keys[:3]
    assert "@odata.deltaLink" in r.json()


async def test_track_changes_refuses_filter_and_tokens_expire(
    client: httpx.AsyncClient, dv: Dv
) -> None:
    r = await dv.req("GET", "leads?$filter=lastname eq 'x'", {"Prefer": "odata.track-changes"})
    assert error(r) == (
        400,
        "0x80060888",
        'The "$filter" query parameter isn\'t supported when Change Tracking is enabled.',
    )
    r = await dv.req("GET", "leads?$top=1", {"Prefer": "odata.track-changes"})
    assert 'The "$top" query parameter' in error(r)[2]
    expired = (
        400,
        "0x80044352",
        "Version stamp associated with the client has expired. Please perform a full sync.",
    )
    assert error(await dv.req("GET", "leads?$deltatoken=garbage")) == expired
    assert (
        error(await dv.req("GET", "leads?$deltatoken=99999999999!01/01/2024 00:00:00")) == expired
    )
    delta = (await dv.req("GET", "leads", {"Prefer": "odata.track-changes"})).json()[
        "@odata.deltaLink"
    ]
    assert (await dv.req("GET", delta)).status_code == 200
    r = await client.put("/_emulator/config", json={"expire_delta_tokens": True})
    assert r.status_code == 200
    assert error(await dv.req("GET", delta)) == expired
    fresh = (await dv.req("GET", "leads", {"Prefer": "odata.track-changes"})).json()[
        "@odata.deltaLink"
    ]
    assert (await dv.req("GET", fresh)).status_code == 200
    await client.put("/_emulator/config", json={"delta_token_ttl_s": 0.001})
    await asyncio.sleep(1.1)
    assert error(await dv.req("GET", fresh)) == expired


# -- bulk messages ----------------------------------------------------------------------


async def test_bulk_messages(dv: Dv) -> None:
    t = "Microsoft.Dynamics.CRM.lead"
    r = await dv.req(
        "POST",
        "leads/Microsoft.Dynamics.CRM.CreateMultiple",
        json={"Targets": [{"@odata.type": t, "lastname": f"B{i}"} for i in range(3)]},
    )
    assert r.status_code == 200
    ids = r.json()["Ids"]
    assert len(ids) == 3 and r.json()["@odata.context"].endswith(
        "#Microsoft.Dynamics.CRM.CreateMultipleResponse"
    )
    r = await dv.req(
        "POST",
        "leads/Microsoft.Dynamics.CRM.UpdateMultiple",
        json={"Targets": [{"@odata.type": t, "leadid": i, "firstname": "U"} for i in ids]},
    )
    assert r.status_code == 204
    new = str(uuid.uuid4())
    r = await dv.req(
        "POST",
        "leads/Microsoft.Dynamics.CRM.UpsertMultiple",
        json={
            "Targets": [
                {"@odata.type": t, "leadid": ids[0], "firstname": "V"},
                {"@odata.type": t, "@odata.id": f"leads({new})", "lastname": "N"},
            ]
        },
    )
    assert r.status_code == 200
    assert [x["RecordCreated"] for x in r.json()["Results"]] == [False, True]
    assert (await dv.req("GET", f"leads({new})")).json()["lastname"] == "N"
    assert (await dv.req("GET", f"leads({ids[0]})")).json()["firstname"] == "V"
    # All or nothing: the second target is too long, so the first is not created either.
    r = await dv.req(
        "POST",
        "leads/Microsoft.Dynamics.CRM.CreateMultiple",
        json={
            "Targets": [
                {"@odata.type": t, "lastname": "ok"},
                {"@odata.type": t, "lastname": "x" * 51},
            ]
        },
    )
    assert error(r)[:2] == (400, "0x80044331")
    r = await dv.req(
        "POST",
        "leads/Microsoft.Dynamics.CRM.UpdateMultiple",
        json={
            "Targets": [
                {"@odata.type": t, "leadid": ids[1], "firstname": "W"},
                {"@odata.type": t, "leadid": str(uuid.uuid4()), "firstname": "W"},
            ]
        },
    )
    assert error(r)[:2] == (404, "0x80040217")
    assert (await dv.req("GET", f"leads({ids[1]})")).json()["firstname"] == "U"
    rows = (await dv.req("GET", "leads?$filter=lastname eq 'ok'")).json()["value"]
    assert rows == []
    r = await dv.req(
        "POST",
        "leads/Microsoft.Dynamics.CRM.CreateMultiple",
        json={"Targets": [{"lastname": "no type"}]},
    )
    assert error(r)[:2] == (400, "0x80048d19")


# -- $batch -------------------------------------------------------------------------------


def batch_body(boundary: str, parts: list[str]) -> bytes:
    return ("".join(f"--{boundary}\r\n{p}" for p in parts) + f"--{boundary}--\r\n").encode()


def http_part(
    method: str, url: str, body: str | None = None, content_id: int | None = None, extra: str = ""
) -> str:
    head = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if content_id is not None:
        head += f"Content-ID: {content_id}\r\n"
    inner = f"{method} {url} HTTP/1.1\r\n{extra}"
    if body is not None:
        inner += "Content-Type: application/json; type=entry\r\n\r\n" + body + "\r\n"
    else:
        inner += "\r\n"
    return head + "\r\n" + inner


def changeset(boundary: str, parts: list[str]) -> str:
    return (
        f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n"
        + batch_body(boundary, parts).decode()
        + "\r\n"
    )


async def send_batch(dv: Dv, body: bytes, prefer: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "multipart/mixed; boundary=batch_1"}
    if prefer:
        headers["Prefer"] = prefer
    return await dv.req("POST", "$batch", headers, content=body)


async def test_batch_changeset_with_content_id_reference(dv: Dv) -> None:
    cs = changeset(
        "changeset_1",
        [
            http_part("POST", "/api/data/v9.2/accounts", '{"name":"Batch Co"}', content_id=1),
            http_part(
                "POST",
                "https://org.test/api/data/v9.2/contacts",
                '{"lastname":"K","parentcustomerid_account@odata.bind":"$1"}',
                content_id=2,
            ),
            http_part("PATCH", "$1", '{"telephone1":"555"}', content_id=3),
        ],
    )
    body = batch_body("batch_1", [cs, http_part("GET", "accounts?$select=name,telephone1")])
    r = await send_batch(dv, body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("multipart/mixed; boundary=batchresponse_")
    text = r.text
    assert text.count("HTTP/1.1 204 No Content") == 3
    assert "Content-ID: 2" in text and "\r\n" in text
    assert '"name":"Batch Co"' in text and '"telephone1":"555"' in text
    contacts = (await dv.req("GET", "contacts")).json()["value"]
    accounts = (await dv.req("GET", "accounts")).json()["value"]
    assert contacts[0]["_parentcustomerid_value"] == accounts[0]["accountid"]


async def test_batch_changeset_is_atomic_and_stops_at_first_failure(dv: Dv) -> None:
    cs = changeset(
        "changeset_2",
        [
            http_part("POST", "accounts", '{"name":"kept?"}', content_id=1),
            http_part("POST", "accounts", '{"name":"' + "x" * 161 + '"}', content_id=2),
        ],
    )
    body = batch_body("batch_1", [cs, http_part("POST", "accounts", '{"name":"after"}')])
    r = await send_batch(dv, body)
    assert r.status_code == 400
    assert "0x80044331" in r.text and "after" not in r.text
    assert (await dv.req("GET", "accounts")).json()["value"] == []


async def test_batch_continue_on_error(dv: Dv) -> None:
    body = batch_body(
        "batch_1",
        [
            http_part("POST", "accounts", '{"name":"one"}'),
            http_part("POST", "accounts", '{"Name":"bad"}'),
            http_part("POST", "accounts", '{"name":"three"}'),
        ],
    )
    r = await send_batch(dv, body, "odata.continue-on-error")
    assert r.status_code == 200
    assert r.text.count("HTTP/1.1 204") == 2 and "HTTP/1.1 400" in r.text
    names = sorted(a["name"] for a in (await dv.req("GET", "accounts")).json()["value"])
    assert names == ["one", "three"]


async def test_batch_requires_crlf_and_known_references(dv: Dv) -> None:
    body = batch_body("batch_1", [http_part("POST", "accounts", '{"name":"x"}')]).replace(
        b"\r\n", b"\n"
    )
    r = await send_batch(dv, body)
    # The part fails inside a multipart answer, as in web-api-client-errors.md's example.
    assert r.status_code == 400 and r.headers["content-type"].startswith("multipart/mixed")
    assert "HTTP/1.1 400" in r.text and '"code":"0x80048d19"' in r.text
    assert "Entity :'accounts'" in r.text and "Stream was not readable." in r.text
    assert (await dv.req("GET", "accounts")).json()["value"] == []
    cs = changeset("changeset_3", [http_part("PATCH", "$1", '{"name":"x"}', content_id=2)])
    r = await send_batch(dv, batch_body("batch_1", [cs]))
    assert r.status_code == 400
    assert "Content-ID Reference: '$1' does not exist in the batch context." in r.text
    cs = changeset("changeset_4", [http_part("GET", "accounts")])
    assert (await send_batch(dv, batch_body("batch_1", [cs]))).status_code == 400
    r = await dv.req("POST", "$batch", {"Content-Type": "application/json"}, content=b"{}")
    assert error(r)[:2] == (400, "0x80048d19")


# -- metadata --------------------------------------------------------------------------------


async def test_entity_definitions_for_the_sdk(dv: Dv) -> None:
    r = await dv.req(
        "GET",
        "EntityDefinitions?$select=LogicalName,EntitySetName,PrimaryIdAttribute&$filter=LogicalName eq 'opportunity'",
    )
    (row,) = r.json()["value"]
    assert (row["EntitySetName"], row["PrimaryIdAttribute"]) == ("opportunities", "opportunityid")
    r = await dv.req(
        "GET",
        "EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet($select=Options)",
    )
    (pick,) = r.json()["value"]
    assert pick["LogicalName"] == "leadqualitycode" and len(pick["OptionSet"]["Options"]) == 3
    # OptionSet is a navigation property: without $expand it is not in the row.
    r = await dv.req(
        "GET",
        "EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
    )
    assert "OptionSet" not in r.json()["value"][0]
    attrs = (await dv.req("GET", "EntityDefinitions(LogicalName='lead')/Attributes")).json()[
        "value"
    ]
    assert {"LogicalName": "firstname", "AttributeType": "String", "MaxLength": 50}.items() <= next(
        a for a in attrs if a["LogicalName"] == "firstname"
    ).items()


# -- limits, faults, control API -----------------------------------------------------------


async def test_request_limit_429_with_retry_after(client: httpx.AsyncClient, dv: Dv) -> None:
    await client.put("/_emulator/config", json={"max_requests": 3, "window_s": 60})
    for _ in range(3):
        assert (await dv.req("GET", "leads")).status_code == 200
    r = await dv.req("GET", "leads")
    assert error(r) == (
        429,
        "0x80072322",
        "Number of requests exceeded the limit of 3 over time window of 60 seconds.",
    )
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    other = Dv(client, await token(client, "someone-else"))
    assert (await other.req("GET", "leads")).status_code == 200  # limits are per user


async def test_concurrency_limit_with_latency(client: httpx.AsyncClient, dv: Dv) -> None:
    await client.put("/_emulator/config", json={"max_concurrency": 2, "latency_ms": 200})
    results = await asyncio.gather(*(dv.req("GET", "leads") for _ in range(5)))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 200, 429, 429, 429]
    throttled = next(r for r in results if r.status_code == 429)
    assert error(throttled) == (
        429,
        "0x80072326",
        "Number of concurrent requests exceeded the limit of 2.",
    )
    assert throttled.headers["Retry-After"] == "1"


async def test_execution_time_limit(client: httpx.AsyncClient, dv: Dv) -> None:
    await client.put(
        "/_emulator/config", json={"max_execution_ms": 50, "latency_ms": 60, "window_s": 300}
    )
    assert (await dv.req("GET", "leads")).status_code == 200
    r = await dv.req("GET", "leads")
    status, code, message = error(r)
    assert (status, code) == (429, "0x80072321")
    assert message.startswith(
        "Combined execution time of incoming requests exceeded limit of 50  milliseconds over time window of 300 seconds."
    )


async def test_fault_injection_rates(client: httpx.AsyncClient, dv: Dv) -> None:
    await client.put("/_emulator/config", json={"fail_rate": 1.0})
    r = await dv.req("GET", "leads")
    assert r.status_code == 503 and r.json()["error"]["message"]
    await client.put(
        "/_emulator/config", json={"fail_rate": 0, "throttle_rate": 1.0, "retry_after_s": 7}
    )
    r = await dv.req("GET", "leads")
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    assert error(r)[1] == "0x80072322"
    await client.put("/_emulator/config", json={"throttle_rate": 0.5, "seed": 42})
    statuses = [(await dv.req("GET", "leads")).status_code for _ in range(40)]
    assert 5 < statuses.count(429) < 35 and set(statuses) == {200, 429}


async def test_throttle_next_answers_exactly_n_requests_429(
    client: httpx.AsyncClient, dv: Dv
) -> None:
    r = await client.put("/_emulator/config", json={"throttle_next": 2, "retry_after_s": 3})
    assert r.json()["throttle_next"] == 2
    statuses = [(await dv.req("GET", "leads")).status_code for _ in range(4)]
    assert statuses == [429, 429, 200, 200]
    assert (await client.get("/_emulator/config")).json()["throttle_next"] == 0
    bad = await client.put("/_emulator/config", json={"throttle_next": -1})
    assert bad.status_code == 400 and "throttle_next" in bad.json()["error"]["message"]


async def test_request_log_lists_requests_in_arrival_order(
    client: httpx.AsyncClient, dv: Dv
) -> None:
    from datetime import UTC, datetime

    await client.post("/_emulator/reset")
    before = datetime.now(UTC)
    await client.put("/_emulator/config", json={"throttle_next": 1})
    await dv.req("GET", "leads")
    await dv.req("GET", "leads?$select=fullname")
    log = (await client.get("/_emulator/requests")).json()["requests"]
    # Control calls are not logged; the token request came before the reset.
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("GET", API + "leads", 429),
        ("GET", API + "leads", 200),
    ]
    times = [datetime.fromisoformat(e["at"]) for e in log]
    assert before <= times[0] <= times[1] <= datetime.now(UTC)
    await client.post("/_emulator/reset")
    assert (await client.get("/_emulator/requests")).json() == {"requests": []}


async def test_cut_applies_write_then_drops_response_in_process(
    client: httpx.AsyncClient, dv: Dv
) -> None:
    await client.put("/_emulator/config", json={"cut_rate": 1.0})
    with pytest.raises(ConnectionCut):
        await dv.req("POST", "accounts", json={"name": "applied"})
    await client.put("/_emulator/config", json={"cut_rate": 0})
    names = [a["name"] for a in (await dv.req("GET", "accounts")).json()["value"]]
    assert names == ["applied"]
    assert (await client.get("/_emulator/stats")).json()["requests"]["cut"] == 1


async def test_config_validation_reset_and_stats(client: httpx.AsyncClient, dv: Dv) -> None:
    r = await client.put("/_emulator/config", json={"fail_rate": 1.5, "latency_ms": -1})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "bad_config"
    assert (
        "fail_rate" in r.json()["error"]["message"] and "latency_ms" in r.json()["error"]["message"]
    )
    assert (await client.put("/_emulator/config", content=b"{oops")).status_code == 400
    assert (await client.put("/_emulator/config", json={"window_s": "10"})).status_code == 400
    assert (
        await client.put("/_emulator/config", json={"denied_entity_sets": ["nope"]})
    ).status_code == 400
    r = await client.put("/_emulator/config", json={"latency_ms": 0, "per_record_ms": 0.01})
    assert r.status_code == 200 and r.json()["per_record_ms"] == 0.01
    await dv.create("leads", {"lastname": "x"})
    await dv.req("GET", "leads")
    stats = (await client.get("/_emulator/stats")).json()
    assert stats["records"]["leads"] == 1 and stats["records"]["systemusers"] == 1
    assert stats["requests"]["by_status"]["201"] == 1 and stats["requests"]["total"] >= 3
    assert (await client.post("/_emulator/reset")).status_code == 200
    stats = (await client.get("/_emulator/stats")).json()
    assert stats["records"]["leads"] == 0 and stats["requests"]["total"] == 0
    assert stats["records"]["systemusers"] == 1  # issued tokens and their users survive
    assert (await client.get("/_emulator/config")).json()["per_record_ms"] == 0
    assert (await dv.req("GET", "leads")).status_code == 200


async def test_db_persists_records(tmp_path) -> None:
    path = tmp_path / "emu.sqlite"
    first = create_app(path)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=first), base_url="http://x"
    ) as c:
        dv = Dv(c, await token(c))
        row = await dv.create("accounts", {"name": "Durable"})
    first.store.close()
    second = create_app(path)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=second), base_url="http://x"
    ) as c:
        dv = Dv(c, await token(c))
        got = (await dv.req("GET", f"accounts({row['accountid']})")).json()
    assert got["name"] == "Durable" and got["@odata.etag"] == row["@odata.etag"]
    second.store.close()
