"""A second generic OData v4 client from PyPI against the emulator over HTTPS,
unpatched: ``python-odata`` (tuomur; pinned in the ``test`` extra). It reflects the
``$metadata`` CSDL into entity classes and queries them like an ORM. Only where it
connects (the API root, and a ``requests`` session carrying an MSAL token), which
certificate it trusts (``REQUESTS_CA_BUNDLE``, set by the ``fresh`` fixture) and one
documented constructor option are ours: ``extra_headers`` asks for
``Prefer: return=representation``, without which Dataverse answers a create with 204
and no body, so the client would never learn the new row's key.

Its documented surface: reflection (entity sets, properties, navigation properties,
function imports), queries (``filter`` with comparisons and ``startswith``,
``order_by``, ``limit``, ``select``, ``expand``, ``count`` as ``/$count`` with the
filter, ``get`` by key, ``first``, ``raw``), writes (insert, update, delete) and its
error class; ``offset`` is ``$skip``, which Dataverse refuses. It has no batches and
no change tracking. It found that ``/$count`` ignored ``$filter``. Two of its own
limits are left alone: it reads a function's result from ``value`` (``WhoAmI``
answers a complex type at the top level, as OData says), and it fails on a null
single-valued navigation in ``$expand``, so the query below expands rows that have
a parent.
"""

from __future__ import annotations

from collections.abc import Iterator

import msal
import pytest
import requests
from emulator_https import Running
from odata import ODataError, ODataService


@pytest.fixture
def service(fresh: Running) -> Iterator[ODataService]:
    with requests.Session() as msal_http, requests.Session() as api:
        app = msal.ConfidentialClientApplication(
            "po-app",
            client_credential="secret",
            authority=f"{fresh.url}/po-tenant",
            instance_discovery=False,
            http_client=msal_http,
        )
        token = app.acquire_token_for_client(scopes=[f"{fresh.url}/.default"])
        api.headers["Authorization"] = f"Bearer {token['access_token']}"
        # After an error answer one of the client's connections stayed open past the
        # session's close (seen with this client only; cause not traced), and the
        # server's shutdown waited for it: the session it is handed keeps none alive.
        api.headers["Connection"] = "close"
        yield ODataService(
            f"{fresh.url}/api/data/v9.2/",
            reflect_entities=True,
            session=api,
            extra_headers={"Prefer": "return=representation"},
            quiet_progress=True,
        )


def _seed(service: ODataService) -> str:
    Account, Contact = service.entities["accounts"], service.entities["contacts"]
    acme = Account()
    acme.name = "Acme"
    service.save(acme)
    for i in range(4):
        contact = Contact()
        contact.lastname = f"L{i}"
        contact.firstname = "Odd" if i % 2 else "Even"
        if i < 2:
            contact.parentcustomerid_account = acme
        service.save(contact)
    return str(acme.accountid)


def test_reflection(service: ODataService) -> None:
    assert {"leads", "contacts", "accounts", "opportunities"} <= set(service.entities)
    Contact, Account = service.entities["contacts"], service.entities["accounts"]
    for name in ("contactid", "lastname", "emailaddress1", "parentcustomerid_account"):
        assert hasattr(Contact, name), name
    assert hasattr(Account, "contact_customer_accounts")
    assert list(service.functions) == ["WhoAmI"]


def test_queries_and_count(service: ODataService) -> None:
    account_id = _seed(service)
    Contact = service.entities["contacts"]
    odd = service.query(Contact).filter(Contact.firstname == "Odd")
    assert sorted(c.lastname for c in odd.all()) == ["L1", "L3"]
    assert odd.count() == 2  # /$count?$filter=...: the emulator answered 4 before
    assert service.query(Contact).count() == 4
    ordered = service.query(Contact).filter(Contact.lastname.startswith("L"))
    ordered = ordered.order_by(Contact.lastname.desc()).limit(2)
    assert [c.lastname for c in ordered] == ["L3", "L2"]
    first = service.query(Contact).order_by(Contact.lastname.asc()).first()
    assert first.lastname == "L0"
    assert service.query(Contact).get(first.contactid).lastname == "L0"
    (row,) = service.query(Contact).raw({"$select": "lastname", "$filter": "lastname eq 'L2'"})
    assert row["lastname"] == "L2"
    parented = service.query(Contact).filter(Contact.firstname == "Even").limit(1)
    parented = parented.filter(Contact.lastname == "L0").expand(Contact.parentcustomerid_account)
    (l0,) = parented.all()
    assert (str(l0.parentcustomerid_account.accountid), l0.parentcustomerid_account.name) == (
        account_id,
        "Acme",
    )
    with pytest.raises(ODataError, match=r"\$skip is not supported"):
        service.query(Contact).offset(1).all()


def test_writes(service: ODataService) -> None:
    Lead = service.entities["leads"]
    lead = Lead()
    lead.lastname = "New"
    lead.emailaddress1 = "new@x.test"
    service.save(lead)
    assert lead.leadid  # from the representation the Prefer header asked for
    lead.firstname = "First"
    service.save(lead)
    again = service.query(Lead).get(lead.leadid)
    assert (again.lastname, again.firstname, again.emailaddress1) == (
        "New",
        "First",
        "new@x.test",
    )
    service.delete(again)
    assert service.query(Lead).filter(Lead.lastname == "New").all() == []
    with pytest.raises(ODataError, match="nosuch"):
        service.query(Lead).raw({"$filter": "nosuch eq 1"})
