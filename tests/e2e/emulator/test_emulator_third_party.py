"""A third-party Dataverse client from PyPI against the emulator over HTTPS, unpatched:
``dataverse-api`` (M. Risanger; pinned in the ``test`` extra). Only where it connects
(the emulator's URL, a session carrying an MSAL token) and which certificate it trusts
(``REQUESTS_CA_BUNDLE``, set by the ``fresh`` fixture) are ours.

Its documented surface, run through: metadata discovery (``entity()`` reads the entity
set, alternate keys, bulk-message support from ``sdkmessagefilters`` and relationships;
``get_entity_definition``, ``get_language_codes``), queries (``read`` with select,
filter, order, top, paging, expand and formatted values), writes (``create`` one by one,
with ``CreateMultiple`` and in ``$batch`` with LF-only line endings; ``upsert`` by
alternate key one by one and in a batch; ``delete`` and ``delete_columns`` one by one
and in a batch). It has no change tracking, so there is none to run.
"""

from __future__ import annotations

from collections.abc import Iterator

import msal
import pytest
import requests
from dataverse_api import DataverseClient
from emulator_https import Running


@pytest.fixture
def dvapi(fresh: Running) -> Iterator[DataverseClient]:
    with requests.Session() as msal_http, requests.Session() as api:
        app = msal.ConfidentialClientApplication(
            "dvapi-app",
            client_credential="secret",
            authority=f"{fresh.url}/dvapi-tenant",
            instance_discovery=False,
            http_client=msal_http,
        )
        token = app.acquire_token_for_client(scopes=[f"{fresh.url}/.default"])
        api.headers["Authorization"] = f"Bearer {token['access_token']}"
        yield DataverseClient(session=api, environment_url=fresh.url + "/")


def test_metadata_discovery(fresh: Running, dvapi: DataverseClient) -> None:
    fresh.emulator.configure({"alternate_keys": {"leads": [["emailaddress1"]]}})
    lead = dvapi.entity("lead")
    assert (lead.entity_set_name, lead.primary_id_attr) == ("leads", "leadid")
    assert lead.alternate_keys == {"lead_emailaddress1_key": ["emailaddress1"]}
    assert lead.supports_create_multiple and lead.supports_update_multiple
    account = dvapi.entity("account")
    assert set(account.relationships.collection_valued) == {
        "contact_customer_accounts",
        "opportunity_parent_account",
    }
    assert "parentcustomerid_account" in dvapi.entity("contact").relationships.single_valued
    definition = dvapi.get_entity_definition("contact")
    assert definition.schema_name == "Contact"
    assert dvapi.get_language_codes() == [1033]


def test_reads_and_writes(fresh: Running, dvapi: DataverseClient) -> None:
    fresh.emulator.configure({"alternate_keys": {"leads": [["emailaddress1"]]}})
    lead = dvapi.entity("lead")
    for mode in ("individual", "multiple", "batch"):  # batch: LF-only line endings
        answers = lead.create(
            [{"lastname": f"{mode}-{i}", "emailaddress1": f"{mode}{i}@x.test"} for i in range(3)],
            mode=mode,
        )
        assert all(a.status_code in (200, 204) for a in answers), [a.text for a in answers]
        assert all("HTTP/1.1 4" not in a.text for a in answers)
    rows = lead.read(
        select=["lastname"], filter="startswith(lastname,'batch')", order_by="lastname desc", top=2
    )
    assert [r["lastname"] for r in rows] == ["batch-2", "batch-1"]
    paged = lead.read(select=["lastname"], page_size=4, return_formatted_values=True)
    assert len(paged) == 9
    key = "lead_emailaddress1_key"
    lead.upsert(
        [
            {"emailaddress1": "batch0@x.test", "firstname": "Up"},
            {"emailaddress1": "n1@x.test", "lastname": "N1"},
        ],
        altkey_name=key,
    )
    answers = lead.upsert(
        [
            {"emailaddress1": "batch1@x.test", "firstname": "UpB"},
            {"emailaddress1": "n2@x.test", "lastname": "N2"},
        ],
        altkey_name=key,
        mode="batch",
    )
    assert all("HTTP/1.1 4" not in a.text for a in answers)
    people = {
        r["emailaddress1"]: r for r in lead.read(select=["emailaddress1", "firstname", "lastname"])
    }
    assert len(people) == 11
    assert (
        people["batch0@x.test"]["firstname"] == "Up"
        and people["batch1@x.test"]["firstname"] == "UpB"
    )
    assert people["n2@x.test"]["lastname"] == "N2"
    lead.delete(ids=[people["n1@x.test"]["leadid"]])
    answers = lead.delete(mode="batch", filter="startswith(lastname,'multiple')")
    assert all("HTTP/1.1 4" not in a.text for a in answers)
    lead.delete_columns(columns=["firstname"], filter="lastname eq 'batch-0'")
    left = lead.read(select=["lastname", "firstname"], order_by="lastname")
    assert len(left) == 7
    assert next(r for r in left if r["lastname"] == "batch-0")["firstname"] is None


def test_expand_and_binds(dvapi: DataverseClient) -> None:
    account, contact = dvapi.entity("account"), dvapi.entity("contact")
    (created,) = account.create([{"name": "Acme"}], return_created=True)
    account_id = created.json()["accountid"]
    contact.create(
        [{"lastname": "C", "parentcustomerid_account@odata.bind": f"accounts({account_id})"}]
    )
    (row,) = contact.read(select=["lastname"], expand="parentcustomerid_account($select=name)")
    assert row["parentcustomerid_account"]["name"] == "Acme"
    (acme,) = account.read(select=["name"], expand="contact_customer_accounts($select=lastname)")
    assert [c["lastname"] for c in acme["contact_customer_accounts"]] == ["C"]
