"""Real clients against the emulator on loopback: Microsoft's Dataverse SDK and MSAL over
HTTPS (a throwaway trustme CA, see conftest.py), and what a cut connection looks like to httpx."""

from __future__ import annotations

import ssl
import time
from typing import Any

import httpx
import msal
import pytest
import requests
from azure.core.credentials import AccessToken
from emulator_https import Running
from PowerPlatform.Dataverse.client import DataverseClient


class EmulatorCredential:
    """An azure-core TokenCredential that asks the emulator's token endpoint through MSAL."""

    def __init__(
        self, authority: str, client_id: str, secret: str, session: requests.Session
    ) -> None:
        self.app = msal.ConfidentialClientApplication(
            client_id,
            client_credential=secret,
            authority=authority,
            instance_discovery=False,
            http_client=session,
        )
        self.calls = 0

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        self.calls += 1
        result = self.app.acquire_token_for_client(scopes=list(scopes))
        assert "access_token" in result, result
        return AccessToken(result["access_token"], int(time.time()) + int(result["expires_in"]))


def test_msal_confidential_client_gets_a_token(fresh: Running, session: requests.Session) -> None:
    # instance_discovery=False is required: otherwise MSAL asks login.microsoftonline.com
    # (not the authority's host) whether 127.0.0.1 is a known authority.
    app = msal.ConfidentialClientApplication(
        "msal-app",
        client_credential="secret",
        authority=f"{fresh.url}/my-tenant",
        instance_discovery=False,
        http_client=session,
    )
    result = app.acquire_token_for_client(scopes=[f"{fresh.url}/.default"])
    assert result["token_type"] == "Bearer" and result["expires_in"] > 3000
    assert result.get("token_source") == "identity_provider"
    again = app.acquire_token_for_client(scopes=[f"{fresh.url}/.default"])
    assert again["access_token"] == result["access_token"]  # served from MSAL's cache
    r = httpx.get(
        f"{fresh.url}/api/data/v9.2/WhoAmI",
        headers={"Authorization": f"Bearer {result['access_token']}"},
        verify=ssl.create_default_context(cafile=str(fresh.ca_file)),
    )
    assert r.status_code == 200
    # validate_authority=False skips instance discovery as well.
    quiet = msal.ConfidentialClientApplication(
        "msal-app",
        client_credential="secret",
        authority=f"{fresh.url}/my-tenant",
        validate_authority=False,
        http_client=session,
    )
    assert "access_token" in quiet.acquire_token_for_client(scopes=[f"{fresh.url}/.default"])


def test_msal_adfs_style_authority_needs_no_discovery_flag(
    fresh: Running, session: requests.Session
) -> None:
    """For clients that pass MSAL an authority but neither ``instance_discovery`` nor
    ``validate_authority``: MSAL takes a tenant named ``adfs`` for AD FS, which it never
    checks with login.microsoftonline.com, and reads ``/adfs/.well-known/
    openid-configuration`` from the authority itself, which the emulator serves."""
    seen: list[str] = []
    session.hooks["response"].append(lambda r, *args, **kwargs: seen.append(r.url))
    app = msal.ConfidentialClientApplication(
        "adfs-app", client_credential="secret", authority=f"{fresh.url}/adfs", http_client=session
    )
    result = app.acquire_token_for_client(scopes=[f"{fresh.url}/.default"])
    assert result["token_type"] == "Bearer", result
    assert seen and all(url.startswith(f"{fresh.url}/adfs/") for url in seen), seen
    r = httpx.get(
        f"{fresh.url}/api/data/v9.2/WhoAmI",
        headers={"Authorization": f"Bearer {result['access_token']}"},
        verify=ssl.create_default_context(cafile=str(fresh.ca_file)),
    )
    assert r.status_code == 200


def test_msal_refuses_plain_http_authority() -> None:
    with pytest.raises(ValueError, match="https"):
        msal.ConfidentialClientApplication(
            "x", client_credential="s", authority="http://127.0.0.1:1/tenant"
        )


def test_microsoft_sdk_crud_query_and_batch(fresh: Running, session: requests.Session) -> None:
    cred = EmulatorCredential(f"{fresh.url}/sdk-tenant", "sdk-app", "secret", session)
    with DataverseClient(fresh.url, cred) as client:
        account_id = client.records.create("account", {"name": "Contoso"})
        lead_id = client.records.create(
            "lead", {"firstname": "Ada", "lastname": "Lovelace", "emailaddress1": "ada@example.com"}
        )
        got = client.records.retrieve("lead", lead_id, select=["firstname", "emailaddress1"])
        assert got["firstname"] == "Ada" and got["emailaddress1"] == "ada@example.com"
        client.records.update("lead", lead_id, {"firstname": "Augusta", "leadqualitycode": "Warm"})
        got = client.records.retrieve("lead", lead_id, select=["firstname", "leadqualitycode"])
        assert got["firstname"] == "Augusta" and got["leadqualitycode"] == 2  # label -> value

        ids = client.records.create(
            "contact",
            [
                {
                    "lastname": f"C{i:02d}",
                    "parentcustomerid_account@odata.bind": f"/accounts({account_id})",
                }
                for i in range(12)
            ],
        )
        assert len(ids) == 12
        pages = list(
            client.records.list_pages(
                "contact", select=["lastname"], filter="startswith(lastname,'C0')", page_size=4
            )
        )
        names = sorted(r["lastname"] for page in pages for r in page)
        assert len(pages) == 3 and names == [f"C{i:02d}" for i in range(10)]
        everything = client.records.list("contact", select=["lastname"], orderby=["lastname desc"])
        assert [r["lastname"] for r in everything][:2] == ["C11", "C10"]

        batch = client.batch.new()
        batch.records.create("account", {"name": "Batch One"})
        with batch.changeset() as cs:
            ref = cs.records.create("account", {"name": "Batch Two"})
            cs.records.create(
                "contact", {"lastname": "Linked", "parentcustomerid_account@odata.bind": ref}
            )
        batch.records.retrieve("lead", lead_id, select=["firstname"])
        result = batch.execute()
        assert not result.failed and len(result.responses) == 4
        assert result.responses[3].data is not None
        assert result.responses[3].data["firstname"] == "Augusta"
        linked = client.records.list(
            "contact", select=["lastname", "_parentcustomerid_value"], filter="lastname eq 'Linked'"
        )
        two = client.records.list("account", select=["name"], filter="name eq 'Batch Two'")
        assert linked[0]["_parentcustomerid_value"] == two[0]["accountid"]

        client.records.delete("lead", lead_id)
        assert client.records.retrieve("lead", lead_id) is None  # the SDK maps 404 to None
    assert cred.calls >= 1
    stats = fresh.emulator.stats()
    assert stats["records"]["accounts"] == 3 and stats["records"]["contacts"] == 13
    assert stats["records"]["leads"] == 0
    assert set(stats["requests"]["by_status"]) <= {"200", "201", "204", "404"}


def test_cut_connection_applies_write_and_drops_response(fresh: Running) -> None:
    form = {"grant_type": "client_credentials", "client_id": "cutter", "client_secret": "s"}
    with httpx.Client(
        base_url=fresh.url, verify=ssl.create_default_context(cafile=str(fresh.ca_file))
    ) as c:
        token = c.post("/t/oauth2/v2.0/token", data=form).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        fresh.emulator.configure({"cut_rate": 1.0})
        with pytest.raises(
            httpx.RemoteProtocolError, match="Server disconnected without sending a response"
        ):
            c.post("/api/data/v9.2/accounts", json={"name": "written anyway"}, headers=headers)
        fresh.emulator.configure({"cut_rate": 0.0})
        rows = c.get("/api/data/v9.2/accounts?$select=name", headers=headers).json()["value"]
    assert [r["name"] for r in rows] == ["written anyway"]
    assert fresh.emulator.stats()["requests"]["cut"] == 1


def test_microsoft_sdk_fetchxml_and_sql(fresh: Running, session: requests.Session) -> None:
    cred = EmulatorCredential(f"{fresh.url}/sdk-tenant", "sdk-app", "secret", session)
    with DataverseClient(fresh.url, cred) as client:
        account_id = client.records.create("account", {"name": "Fabrikam"})
        client.records.create(
            "contact",
            [
                {
                    "lastname": f"F{i:02d}",
                    "firstname": "odd" if i % 2 else "even",
                    "parentcustomerid_account@odata.bind": f"/accounts({account_id})",
                }
                for i in range(7)
            ],
        )
        # count='3' makes the SDK follow morerecords and the paging cookie over 3 pages.
        xml = (
            "<fetch count='3'><entity name='contact'><attribute name='lastname'/>"
            "<filter><condition attribute='lastname' operator='begins-with' value='F'/></filter>"
            "<order attribute='lastname'/>"
            "<link-entity name='account' from='accountid' to='parentcustomerid' alias='a'>"
            "<attribute name='name'/></link-entity></entity></fetch>"
        )
        pages = list(client.query.fetchxml(xml).execute_pages())
        assert [len(p.records) for p in pages] == [3, 3, 1]
        rows = [r for p in pages for r in p.records]
        assert [r["lastname"] for r in rows] == [f"F{i:02d}" for i in range(7)]
        assert {r["a.name"] for r in rows} == {"Fabrikam"}
        got = client.query.sql(
            "SELECT TOP 2 lastname FROM contact WHERE firstname = 'odd' ORDER BY lastname DESC"
        )
        assert [r["lastname"] for r in got] == ["F05", "F03"]


def test_microsoft_sdk_table_metadata(fresh: Running, session: requests.Session) -> None:
    cred = EmulatorCredential(f"{fresh.url}/sdk-tenant", "sdk-app", "secret", session)
    with DataverseClient(fresh.url, cred) as client:
        info = client.tables.get("contact")
        assert info is not None and info["entity_set_name"] == "contacts"
        assert client.tables.get("widget") is None
        tables = client.tables.list(select=["LogicalName"], filter="ObjectTypeCode le 2")
        assert sorted(t["LogicalName"] for t in tables) == ["account", "contact"]
        strings = client.tables.list_columns(
            "contact", select=["LogicalName", "MaxLength"], filter="AttributeType eq 'String'"
        )
        assert {c["LogicalName"] for c in strings} == {
            "emailaddress1",
            "firstname",
            "lastname",
            "fullname",
        }
        assert client.tables.get_alternate_keys("lead") == []
        batch = client.batch.new()
        batch.tables.get("lead")
        result = batch.execute()
        # The SDK hands back the raw collection of its EntityDefinitions query.
        (row,) = result.responses[0].data["value"]
        assert not result.failed and row["EntitySetName"] == "leads"


def test_microsoft_sdk_upsert_expand_and_annotations(
    fresh: Running, session: requests.Session
) -> None:
    from PowerPlatform.Dataverse.models import UpsertItem

    fresh.emulator.configure({"alternate_keys": {"accounts": [["accountnumber"]]}})
    cred = EmulatorCredential(f"{fresh.url}/sdk-tenant", "sdk-app", "secret", session)
    with DataverseClient(fresh.url, cred) as client:
        client.records.upsert(
            "account", [UpsertItem(alternate_key={"accountnumber": "A-1"}, record={"name": "One"})]
        )
        client.records.upsert(
            "account",
            [
                UpsertItem(alternate_key={"accountnumber": "A-1"}, record={"name": "One again"}),
                UpsertItem(alternate_key={"accountnumber": "A-2"}, record={"name": "Two"}),
            ],
        )
        rows = client.records.list("account", select=["name", "accountnumber"], orderby=["name"])
        assert [(r["name"], r["accountnumber"]) for r in rows] == [
            ("One again", "A-1"),
            ("Two", "A-2"),
        ]
        one = next(r for r in rows if r["accountnumber"] == "A-1")
        client.records.create(
            "contact",
            {
                "lastname": "Linked",
                "parentcustomerid_account@odata.bind": f"/accounts({one['accountid']})",
            },
        )
        got = client.records.list(
            "contact",
            select=["lastname", "_parentcustomerid_value"],
            expand=["parentcustomerid_account($select=name)"],
            include_annotations="*",
        )
        (contact,) = got
        assert contact["parentcustomerid_account"]["name"] == "One again"
        formatted = "_parentcustomerid_value@OData.Community.Display.V1.FormattedValue"
        assert contact[formatted] == "One again"
        tables = client.query.sql("SELECT name FROM account WHERE accountnumber = 'A-2'")
        assert [t["name"] for t in tables] == ["Two"]


def test_microsoft_sdk_deletes_a_list_with_bulk_delete(
    fresh: Running, session: requests.Session
) -> None:
    cred = EmulatorCredential(f"{fresh.url}/sdk-tenant", "sdk-app", "secret", session)
    with DataverseClient(fresh.url, cred) as client:
        ids = client.records.create("lead", [{"lastname": f"L{i}"} for i in range(4)])
        job_id = client.records.delete("lead", ids[:3])
        assert job_id
        job = client.records.retrieve("asyncoperation", job_id, select=["statecode", "statuscode"])
        assert (job["statecode"], job["statuscode"]) == (3, 30)
        left = client.records.list("lead", select=["lastname"])
        assert [r["lastname"] for r in left] == ["L3"]
        client.records.delete("lead", ids[3:], use_bulk_delete=False)
        assert list(client.records.list("lead", select=["lastname"])) == []


def test_microsoft_sdk_dataframes_and_typed_columns(
    fresh: Running, session: requests.Session
) -> None:
    import pandas as pd

    cred = EmulatorCredential(f"{fresh.url}/sdk-tenant", "sdk-app", "secret", session)
    with DataverseClient(fresh.url, cred) as client:
        frame = pd.DataFrame([{"name": f"D{i}", "accountnumber": f"N{i}"} for i in range(4)])
        ids = client.dataframe.create("account", frame)
        assert len(ids) == 4
        got = (
            client.query.builder("account").select("name").order_by("name").execute().to_dataframe()
        )
        assert list(got["name"]) == ["D0", "D1", "D2", "D3"]
        changes = pd.DataFrame({"accountid": list(ids[:2]), "telephone1": ["1", "2"]})
        client.dataframe.update("account", changes, id_column="accountid")
        phones = client.dataframe.sql(
            "SELECT name, telephone1 FROM account WHERE telephone1 IS NOT NULL"
        )
        assert sorted(phones["telephone1"]) == ["1", "2"]
        client.dataframe.delete("account", ids[2:])
        assert len(client.query.builder("account").select("name").execute().to_dataframe()) == 2
        typed = client.tables.list_columns("lead", typed=True, select=["LogicalName", "MaxLength"])
        lengths = {c["LogicalName"]: c.get("MaxLength") for c in typed}
        assert lengths["subject"] == 300 and lengths["emailaddress1"] == 100
        column = client.tables.get_column("lead", "firstname", typed=True)
        assert column is not None and column["MaxLength"] == 50
