"""Microsoft's SDK (issue 17's last bullet), the parts run inside a ``$batch``:
``batch.tables.get``/``list``, ``batch.query.sql``, ``batch.records.upsert`` by
alternate key (one item: PATCH by key; several: ``UpsertMultiple``), ``batch.records.list``
with annotations, and ``batch.dataframe.create``/``update``/``delete``, each checked
against what the emulator then holds; and ``tables.list_columns`` outside a batch with a
filter and a typed cast (the SDK has no batched ``list_columns``)."""

from __future__ import annotations

import pandas as pd
import requests
from emulator_https import Running
from PowerPlatform.Dataverse.client import DataverseClient
from PowerPlatform.Dataverse.models import UpsertItem
from test_emulator_clients import EmulatorCredential


def _client(fresh: Running, session: requests.Session) -> DataverseClient:
    cred = EmulatorCredential(f"{fresh.url}/sdk-tenant", "sdk-app", "secret", session)
    return DataverseClient(fresh.url, cred)


def test_metadata_and_sql_inside_a_batch(fresh: Running, session: requests.Session) -> None:
    with _client(fresh, session) as client:
        client.records.create("account", [{"name": "Bn"}, {"name": "An"}])
        batch = client.batch.new()
        batch.tables.get("contact")
        batch.tables.list(select=["LogicalName"], filter="ObjectTypeCode le 2")
        batch.query.sql("SELECT TOP 1 name FROM account ORDER BY name")
        batch.tables.get("widget")
        result = batch.execute(continue_on_error=True)
        got, listed, sql, missing = result.responses
        assert [r["EntitySetName"] for r in got.data["value"]] == ["contacts"]
        assert sorted(t["LogicalName"] for t in listed.data["value"]) == ["account", "contact"]
        assert [r["name"] for r in sql.data["value"]] == ["An"]
        # An EntityDefinitions filter that finds nothing is an empty collection, not an error.
        assert missing.is_success and missing.data["value"] == []


def test_upsert_list_and_dataframes_inside_a_batch(
    fresh: Running, session: requests.Session
) -> None:
    fresh.emulator.configure({"alternate_keys": {"accounts": [["accountnumber"]]}})
    with _client(fresh, session) as client:
        client.records.upsert(
            "account", [UpsertItem(alternate_key={"accountnumber": "K-1"}, record={"name": "Old"})]
        )
        batch = client.batch.new()
        batch.records.upsert(
            "account", [UpsertItem(alternate_key={"accountnumber": "K-1"}, record={"name": "New"})]
        )
        batch.records.upsert(
            "account",
            [
                {"alternate_key": {"accountnumber": "K-2"}, "record": {"name": "Two"}},
                {"alternate_key": {"accountnumber": "K-3"}, "record": {"name": "Three"}},
            ],
        )
        batch.dataframe.create("contact", pd.DataFrame([{"lastname": f"F{i}"} for i in range(3)]))
        result = batch.execute()
        assert not result.failed, [(r.status_code, r.error_message) for r in result.failed]
        rows = client.records.list("account", select=["name", "accountnumber"], orderby=["name"])
        assert [(r["name"], r["accountnumber"]) for r in rows] == [
            ("New", "K-1"),
            ("Three", "K-3"),
            ("Two", "K-2"),
        ]
        contacts = list(client.records.list("contact", select=["lastname"], orderby=["lastname"]))
        assert [c["lastname"] for c in contacts] == ["F0", "F1", "F2"]

        ids = pd.Series([c["contactid"] for c in contacts])
        batch = client.batch.new()
        batch.dataframe.update(
            "contact", pd.DataFrame({"contactid": ids[:2], "firstname": ["A", "B"]}), "contactid"
        )
        batch.dataframe.delete("contact", ids[2:], use_bulk_delete=False)
        batch.records.list(
            "account",
            select=["name", "createdon"],
            filter="accountnumber eq 'K-1'",
            include_annotations="OData.Community.Display.V1.FormattedValue",
        )
        result = batch.execute()
        assert not result.failed, [(r.status_code, r.error_message) for r in result.failed]
        (listed,) = [r for r in result.responses if r.data and "value" in r.data]
        (row,) = listed.data["value"]
        assert row["name"] == "New"
        assert row["createdon@OData.Community.Display.V1.FormattedValue"]
        left = client.records.list(
            "contact", select=["lastname", "firstname"], orderby=["lastname"]
        )
        assert [(c["lastname"], c["firstname"]) for c in left] == [("F0", "A"), ("F1", "B")]


def test_list_columns_filters_and_casts(fresh: Running, session: requests.Session) -> None:
    with _client(fresh, session) as client:
        lookups = client.tables.list_columns(
            "contact", select=["LogicalName", "AttributeType"], filter="AttributeType eq 'Lookup'"
        )
        names = {c["LogicalName"] for c in lookups}
        assert "createdby" in names and "lastname" not in names
        picks = client.tables.list_columns("lead", typed=True, select=["LogicalName"])
        assert {"leadqualitycode", "subject"} <= {c["LogicalName"] for c in picks}


def test_sql_aggregates_and_paging_clauses(fresh: Running, session: requests.Session) -> None:
    with _client(fresh, session) as client:
        client.records.create(
            "lead",
            [{"lastname": f"L{i}", "companyname": "Big" if i < 3 else "Small"} for i in range(5)],
        )
        counted = client.query.sql(
            "SELECT companyname, COUNT(*) AS n FROM lead GROUP BY companyname ORDER BY n DESC"
        )
        assert [(r["companyname"], r["n"]) for r in counted] == [("Big", 3), ("Small", 2)]
        page = client.query.sql(
            "SELECT lastname FROM lead WHERE lastname BETWEEN 'L1' AND 'L4' "
            "ORDER BY lastname OFFSET 1 ROWS FETCH NEXT 2 ROWS ONLY"
        )
        assert [r["lastname"] for r in page] == ["L2", "L3"]
        frame = client.dataframe.sql("SELECT MAX(lastname) AS last FROM lead")
        assert list(frame["last"]) == ["L4"]
        # The SDK docstring's own example of a join with aggregation.
        acme = client.records.create("account", {"name": "Acme"})
        client.records.create("account", {"name": "Empty"})
        client.records.create(
            "contact",
            [
                {"lastname": f"C{i}", "parentcustomerid_account@odata.bind": f"/accounts({acme})"}
                for i in range(2)
            ],
        )
        counts = client.query.sql(
            "SELECT a.name, COUNT(c.contactid) as cnt "
            "FROM account a "
            "JOIN contact c ON a.accountid = c.parentcustomerid "
            "GROUP BY a.name"
        )
        assert [(r["name"], r["cnt"]) for r in counts] == [("Acme", 2)]
