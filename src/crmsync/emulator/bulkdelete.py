"""``POST BulkDelete``: an asynchronous delete job and its ``asyncoperations`` row.

From the ``BulkDelete`` action and ``BulkDeleteResponse`` reference pages: the body names
the job (``JobName``) and the rows (``QuerySet``: ``QueryExpression`` objects with a
``Criteria`` ``FilterExpression`` of ``ConditionExpression`` items and nested
``Filters``); the answer is ``{"JobId": <asyncoperationid>}`` at once and the job "runs
asynchronously in the background". Poll ``asyncoperations(<JobId>)``: ``statecode`` 0
(Ready) / ``statuscode`` 10 (Waiting) until it completes with 3 / 30 (Succeeded).
Inferred: the emulator runs a job just before it handles its next request, so a client
may see it waiting once but never needs to wait long.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from crmsync.emulator import faults
from crmsync.emulator.conditions import coerce, column, operator_test
from crmsync.emulator.http import Call, Reply
from crmsync.emulator.model import BY_LOGICAL, Entity
from crmsync.emulator.odata import format_datetime
from crmsync.emulator.store import Store

Row = dict[str, Any]
_OPERATORS = {
    "Equal": "eq", "NotEqual": "ne", "GreaterThan": "gt", "GreaterEqual": "ge",
    "LessThan": "lt", "LessEqual": "le", "Like": "like", "NotLike": "not-like",
    "In": "in", "NotIn": "not-in", "Null": "null", "NotNull": "not-null",
    "BeginsWith": "begins-with", "EndsWith": "ends-with",
}  # fmt: skip
JOBS = "asyncoperations"


def _bad(inner: str) -> faults.DataverseFault:
    return faults.bad_payload("BulkDelete", f"Microsoft.OData.ODataException: {inner}")


def submit(call: Call, store: Store) -> tuple[Reply, tuple[str, list[tuple[Entity, Any]]]]:
    """Validate the request and record the job; return the reply and the pending job."""
    try:
        body = json.loads(call.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"Invalid JSON. {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("JobName"), str):
        raise _bad("BulkDelete needs a JobName.")
    queries = body.get("QuerySet")
    if not isinstance(queries, list) or not queries:
        raise _bad("BulkDelete needs a QuerySet of QueryExpression objects.")
    plans = [_query(q) for q in queries]
    job_id = str(uuid.uuid4())
    now = format_datetime(datetime.now(UTC))
    row = {
        "asyncoperationid": job_id, "name": body["JobName"][:256], "operationtype": 13,
        "statecode": 0, "statuscode": 10, "message": None, "completedon": None,
        "createdon": now, "modifiedon": now, "_createdby_value": call.user_id,
        "_modifiedby_value": call.user_id, "versionnumber": store.next_version(),
    }  # fmt: skip
    store.put(JOBS, row)
    ctx = f"{call.base}$metadata#Microsoft.Dynamics.CRM.BulkDeleteResponse"
    return Reply.json(200, {"@odata.context": ctx, "JobId": job_id}), (job_id, plans)


def run(job: tuple[str, list[tuple[Entity, Any]]], store: Store) -> None:
    """Delete the rows the job's queries find; mark the job completed."""
    job_id, plans = job
    old = store.get(JOBS, job_id)
    if old is None:
        return  # submitted in a changeset that rolled back: the job never existed
    deleted = 0
    for entity, matches in plans:
        doomed = [k for k, r in store.tables[entity.entity_set].rows.items() if matches(r)]
        for key in doomed:
            store.delete(entity.entity_set, key)
        deleted += len(doomed)
    now = format_datetime(datetime.now(UTC))
    done = {**old, "statecode": 3, "statuscode": 30, "completedon": now, "modifiedon": now}
    done["message"] = f"{deleted} records deleted."
    done["versionnumber"] = store.next_version()
    store.put(JOBS, done)


def _query(query: Any) -> tuple[Entity, Callable[[Row], bool]]:
    if not isinstance(query, dict) or not isinstance(query.get("EntityName"), str):
        raise _bad("each QuerySet item needs an EntityName.")
    entity = BY_LOGICAL.get(query["EntityName"].lower())
    if entity is None or entity.entity_set == JOBS:
        raise faults.DataverseFault(
            404, "0x80040217", f"Could not find entity with name {query['EntityName']}."
        )  # (inferred) wording, as for RetrieveTotalRecordCount
    criteria = query.get("Criteria")
    if criteria is None:
        return entity, lambda r: True
    return entity, _filter(entity, criteria)


def _filter(entity: Entity, node: Any) -> Callable[[Row], bool]:
    if not isinstance(node, dict):
        raise _bad("Criteria must be a FilterExpression.")
    operator = node.get("FilterOperator", "And")
    if operator not in ("And", "Or"):
        raise _bad(f"FilterOperator '{operator}' is not And or Or.")
    parts = [_condition(entity, c) for c in node.get("Conditions") or []]
    parts += [_filter(entity, f) for f in node.get("Filters") or []]
    if operator == "Or":
        return lambda r: any(p(r) for p in parts)
    return lambda r: all(p(r) for p in parts)


def _condition(entity: Entity, node: Any) -> Callable[[Row], bool]:
    if not isinstance(node, dict) or not isinstance(node.get("AttributeName"), str):
        raise _bad("each ConditionExpression needs an AttributeName.")
    attr = column(entity, node["AttributeName"])
    if attr is None:
        raise faults.unknown_property(entity.logical, node["AttributeName"])
    op = _OPERATORS.get(str(node.get("Operator")))
    if op is None:
        raise _bad(f"the condition operator '{node.get('Operator')}' is not supported.")
    raw = [v.get("Value") if isinstance(v, dict) else v for v in node.get("Values") or []]
    pattern = op.endswith(("like", "-with"))
    values = [str(v) if pattern else coerce(entity, attr, v) for v in raw]
    check = operator_test(op, values)
    name = attr.name
    return lambda r: check(r.get(name))
