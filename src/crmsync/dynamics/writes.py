"""Writes as data: what to send for one record, and what came back. No I/O.

A ``Write`` describes one record operation; ``request_for`` turns it into the HTTP request
(used alone or inside a ``$batch``); ``result_from`` turns a response back into an
``ItemResult`` that is either a success (CRM id, ETag) or the mapped exception.

Request forms (use-upsert-insert-update-record, perform-conditional-operations):
- create: ``POST /set``; 204 with ``OData-EntityId``.
- upsert: ``PATCH /set(<id>)`` with no condition (PATCH upserts by default); retrying it
  after a lost response never makes a second record, which is why creates with a
  crmsync-chosen id should use it.
- update only: ``PATCH`` + ``If-Match: *`` (404 when absent); create only:
  ``If-None-Match: *`` (412 when present); optimistic concurrency: ``If-Match: W/"<n>"``.
- delete: ``DELETE /set(<id>)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from crmsync.domain import GUID
from crmsync.dynamics.batch import BatchRequest, BatchResponse
from crmsync.dynamics.faults import classify
from crmsync.errors import CrmsyncError, Retriable

Op = Literal["create", "upsert", "update", "delete"]
BulkMessage = Literal["CreateMultiple", "UpdateMultiple", "UpsertMultiple"]

_GUID = re.compile(rf"\(({GUID})\)")


@dataclass(frozen=True)
class Write:
    """One record operation against an entity set."""

    op: Op
    entity_set: str
    record_id: str | None = None  # required except for create
    body: Mapping[str, Any] | None = None
    if_match: str | None = None  # "*" or a weak ETag such as W/"123"
    if_none_match: str | None = None  # "*" for create-only
    # True asks Dataverse to apply duplicate detection (header set to "false").
    detect_duplicates: bool = False
    return_representation: bool = False

    def __post_init__(self) -> None:
        if self.op != "create" and not self.record_id:
            raise ValueError(f"{self.op} needs a record_id")


@dataclass(frozen=True)
class ItemResult:
    """The outcome of one item: ``error`` is None on success."""

    crm_id: str | None = None
    etag: str | None = None
    created: bool | None = None  # known only with return=representation on upsert
    error: CrmsyncError | None = None
    record: Mapping[str, Any] | None = field(default=None, repr=False)
    # False: refused before sending, as Dynamics refused the same value lately.
    sent: bool = True

    @property
    def ok(self) -> bool:
        return self.error is None


def record_path(entity_set: str, record_id: str) -> str:
    return f"{entity_set}({record_id})"


def write_headers(write: Write) -> dict[str, str]:
    headers: dict[str, str] = {}
    if write.if_match:
        headers["If-Match"] = write.if_match
    if write.if_none_match:
        headers["If-None-Match"] = write.if_none_match
    if write.detect_duplicates and write.op != "delete":
        # manage-duplicate-detection-create-update: off by default on the Web API.
        headers["MSCRM.SuppressDuplicateDetection"] = "false"
    if write.return_representation and write.op != "delete":
        headers["Prefer"] = "return=representation"
    return headers


def request_for(write: Write) -> BatchRequest:
    if write.op == "create":
        return BatchRequest("POST", write.entity_set, write_headers(write), dict(write.body or {}))
    assert write.record_id is not None
    path = record_path(write.entity_set, write.record_id)
    if write.op == "delete":
        return BatchRequest("DELETE", path, write_headers(write))
    if write.op == "update" and not write.if_match:
        write = replace(write, if_match="*")
    return BatchRequest("PATCH", path, write_headers(write), dict(write.body or {}))


def id_from_entity_url(url: str | None) -> str | None:
    """The GUID in ``OData-EntityId: .../accounts(<guid>)``."""
    if not url:
        return None
    found = _GUID.search(url)
    return found.group(1).lower() if found else None


def result_from(write: Write, status: int, headers: Mapping[str, str], body: Any) -> ItemResult:
    """Map one response (``headers`` with lower-case names, ``body`` parsed JSON or None)."""
    if status >= 400:
        return ItemResult(crm_id=write.record_id, error=classify(status, body, headers))
    record = body if isinstance(body, Mapping) else None
    crm_id = id_from_entity_url(headers.get("odata-entityid") or headers.get("location"))
    etag = headers.get("etag")
    if record is not None:
        etag = etag or record.get("@odata.etag")
    created: bool | None = None
    if write.op == "create":
        created = True
    elif write.op == "upsert" and write.return_representation:
        created = status == 201  # upsert: 201 created, 200 updated
    return ItemResult(
        crm_id=crm_id or (write.record_id.lower() if write.record_id else None),
        etag=etag,
        created=created,
        record=record,
    )


def result_from_batch(write: Write, response: BatchResponse | None) -> ItemResult:
    if response is None:
        # Without continue-on-error the batch stops at the first failure; the rest never ran.
        return ItemResult(
            crm_id=write.record_id,
            error=Retriable("not executed: an earlier request in the batch failed"),
        )
    try:
        body = response.json()
    except ValueError:
        body = response.body
    return result_from(write, response.status, response.headers, body)


# --- bulk messages (bulk-operations, optimize-performance-create-update) --------------


def bulk_payload(
    message: BulkMessage,
    entity_set: str,
    logical_name: str,
    primary_key: str,
    writes: Sequence[Write],
) -> dict[str, Any]:
    """``{"Targets": [...]}``; each target names its table by ``@odata.type`` (required).

    UpsertMultiple identifies each record by ``@odata.id`` (webapi/reference/upsertmultiple:
    "identifies the record with a relative URL"), here ``set(<guid>)``; Create/UpdateMultiple
    carry the primary key column in the record itself.
    """
    targets = []
    for w in writes:
        target: dict[str, Any] = {
            **(w.body or {}),
            "@odata.type": f"Microsoft.Dynamics.CRM.{logical_name}",
        }
        if w.record_id and message == "UpsertMultiple":
            target["@odata.id"] = record_path(entity_set, w.record_id)
        elif w.record_id:
            target[primary_key] = w.record_id
        targets.append(target)
    return {"Targets": targets}


def bulk_results(writes: Sequence[Write], body: Any) -> list[ItemResult]:
    """Per-item successes. CreateMultiple answers 200 with ``Ids``; UpsertMultiple and
    UpdateMultiple answer 204 (no body), so ids come from the writes."""
    ids: list[Any] = []
    if isinstance(body, Mapping) and isinstance(body.get("Ids"), list):
        ids = body["Ids"]
    out = []
    for i, w in enumerate(writes):
        crm_id = str(ids[i]).lower() if i < len(ids) else (w.record_id or "").lower() or None
        out.append(ItemResult(crm_id=crm_id, created=True if w.op == "create" else None))
    return out
