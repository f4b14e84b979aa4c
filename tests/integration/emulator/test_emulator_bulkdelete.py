"""BulkDelete: a JobId at once, the rows deleted asynchronously, an asyncoperations row to poll."""

from __future__ import annotations

from typing import Any

from dvclient import Dv, batch_body, error, send_batch


def bulk_body(entity: str, criteria: dict[str, Any] | None) -> dict[str, Any]:
    query: dict[str, Any] = {
        "@odata.type": "Microsoft.Dynamics.CRM.QueryExpression",
        "EntityName": entity,
    }
    if criteria is not None:
        query["Criteria"] = criteria
    return {
        "JobName": "Bulk delete test",
        "SendEmailNotification": False,
        "ToRecipients": [],
        "CCRecipients": [],
        "RecurrencePattern": "",
        "StartDateTime": "2026-12-01T00:00:00Z",
        "QuerySet": [query],
    }


def condition(name: str, operator: str, *values: Any) -> dict[str, Any]:
    return {
        "AttributeName": name,
        "Operator": operator,
        "Values": [{"Value": v, "Type": "System.String"} for v in values],
    }


async def test_bulk_delete_job(dv: Dv) -> None:
    ids = [
        (await dv.create("leads", {"lastname": name}))["leadid"] for name in ("a", "b", "c", "keep")
    ]
    criteria = {
        "FilterOperator": "Or",
        "Conditions": [condition("leadid", "In", ids[0], ids[1])],
        "Filters": [{"FilterOperator": "And", "Conditions": [condition("lastname", "Equal", "C")]}],
    }
    r = await dv.req("POST", "BulkDelete", json=bulk_body("lead", criteria))
    assert r.status_code == 200, r.text
    job_id = r.json()["JobId"]
    assert r.json()["@odata.context"].endswith("#Microsoft.Dynamics.CRM.BulkDeleteResponse")
    job = (
        await dv.get(f"asyncoperations({job_id})?$select=statecode,statuscode,operationtype,name")
    ).json()
    assert (job["statecode"], job["statuscode"], job["operationtype"]) in ((0, 10, 13), (3, 30, 13))
    again = (await dv.get(f"asyncoperations({job_id})")).json()
    assert (again["statecode"], again["statuscode"]) == (3, 30)
    assert again["message"] == "3 records deleted." and again["completedon"]
    names = [x["lastname"] for x in (await dv.get("leads?$select=lastname")).json()["value"]]
    assert names == ["keep"]
    # The deletes are real deletes: change tracking reports them.
    assert (await dv.get(f"leads({ids[0]})")).status_code == 404


async def test_bulk_delete_everything_and_errors(dv: Dv) -> None:
    await dv.create("accounts", {"name": "x"})
    r = await dv.req("POST", "BulkDelete", json=bulk_body("account", None))
    assert r.status_code == 200
    assert (await dv.get("accounts")).json()["value"] == []
    assert error(await dv.req("POST", "BulkDelete", json={"JobName": "x"}))[:2] == (
        400,
        "0x80048d19",
    )
    assert error(await dv.req("POST", "BulkDelete", content=b"{oops"))[0] == 400
    assert error(await dv.req("POST", "BulkDelete", json=bulk_body("widget", None)))[0] == 404
    bad_op = bulk_body("lead", {"Conditions": [condition("lastname", "Sounds", "x")]})
    assert error(await dv.req("POST", "BulkDelete", json=bad_op))[0] == 400
    bad_attr = bulk_body("lead", {"Conditions": [condition("nope", "Equal", "x")]})
    assert error(await dv.req("POST", "BulkDelete", json=bad_attr))[0] == 400
    assert error(await dv.get("BulkDelete"))[0] == 404


async def test_bulk_delete_in_a_rolled_back_changeset_never_runs(dv: Dv) -> None:
    import json

    from dvclient import http_part

    await dv.create("leads", {"lastname": "survivor"})
    cs_parts = [
        http_part("POST", "BulkDelete", json.dumps(bulk_body("lead", None))),
        http_part("POST", "leads", '{"lastname":"' + "x" * 51 + '"}'),
    ]
    cs = (
        "Content-Type: multipart/mixed; boundary=cs_1\r\n\r\n"
        + batch_body("cs_1", cs_parts).decode()
        + "\r\n"
    )
    r = await send_batch(dv, batch_body("batch_1", [cs]))
    assert r.status_code == 400
    names = [x["lastname"] for x in (await dv.get("leads?$select=lastname")).json()["value"]]
    assert names == ["survivor"]
    assert (await dv.get("asyncoperations")).json()["value"] == []
