"""Execution time charged per request, as Dataverse counts it against the per-user budget.

``cost_model`` "flat" charges ``latency_ms + per_record_ms * records`` for any request;
"dataverse" charges per operation (``costs``, milliseconds): a single create, update,
upsert or delete; ``CreateMultiple``/``UpdateMultiple``/``UpsertMultiple`` per request
plus per target; a read per page plus per row; a ``$batch`` its own overhead plus each
part it executed, costed as that operation on its own (``$batch`` is ExecuteMultiple,
which "behaves the same as if you executed each message request ... separately",
execute-batch-operations-using-web-api.md and the ExecuteMultiple docs). Charged as
attempted, refused or not: Dataverse did the work before answering (inferred). Every
charge also lands in one ``MESSAGES`` bucket for ``GET /_emulator/stats``. Charging is
pure: what is slept stays ``limits.Limiter.delay_s``.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from crmsync.emulator.http import Call, Reply

if TYPE_CHECKING:
    from crmsync.emulator.settings import Settings

MODELS = ("flat", "dataverse")
MESSAGES = ("$batch", "CreateMultiple", "UpdateMultiple", "UpsertMultiple", "single", "read")
BULK = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")

# Derived in docs/emulator.md ("Execution time"). Single operations and the bulk totals
# from Gaszewski's 1,000-record runs on a standard table (Create 141.93 s, Update
# 149.06 s, Delete 182.97 s one by one; CreateMultiple 11.00 s, UpdateMultiple
# 19.37 s); reads from Carrington's 275,000 rows in 5,000-row pages in 91 s. The
# per-request overheads and the upsert figures are inferred.
DEFAULT_COSTS: dict[str, float] = {
    "create": 142.0,
    "update": 149.0,
    "upsert": 149.0,
    "delete": 183.0,
    "batch": 100.0,
    "multiple_request": 100.0,
    "create_multiple_record": 10.9,
    "update_multiple_record": 19.27,
    "upsert_multiple_record": 19.27,
    "read_page": 100.0,
    "read_row": 0.31,
}
MAX_COST_MS = 600_000.0

_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?P<key>\([^)]*\))?(?:/(?P<rest>.*))?$")
_BULK_RE = re.compile(r"^Microsoft\.Dynamics\.CRM\.(CreateMultiple|UpdateMultiple|UpsertMultiple)$")


def valid_costs(value: object) -> bool:
    """An object of known cost names to milliseconds (0..600000); any subset."""
    if not isinstance(value, dict):
        return False
    for key, ms in value.items():
        if key not in DEFAULT_COSTS:
            return False
        if isinstance(ms, bool) or not isinstance(ms, int | float):
            return False
        if not 0 <= ms <= MAX_COST_MS:
            return False
    return True


def operation(call: Call) -> str:
    """What Dataverse runs for ``call``: "read", "create", "update", "upsert", "delete"
    or a bulk message name. ``$batch`` is charged part by part (``charge``)."""
    if call.method in ("GET", "HEAD"):
        return "read"
    m = _PATH_RE.match(call.path)
    if m is None:
        return "update"
    key, rest = m.group("key"), m.group("rest")
    if key is None and rest is not None and call.method == "POST":
        bulk = _BULK_RE.match(rest)
        if bulk is not None:
            return bulk.group(1)
    if key is None and rest is None and call.method == "POST":
        return "create"
    if key is not None and rest is None and call.method == "PATCH":
        # PATCH is an upsert unless If-None-Match: * (create only) or If-Match (update
        # only) says otherwise (perform-conditional-operations-using-web-api.md).
        if (call.header("if-none-match") or "").strip() == "*":
            return "create"
        if call.header("if-match"):
            return "update"
        return "upsert"
    if key is not None and rest is None and call.method == "DELETE":
        return "delete"
    # Single properties, $ref (dis)associations, BulkDelete and other actions:
    # one write each (inferred).
    return "update"


def bucket(call: Call) -> str:
    """The stats bucket of a top-level request."""
    if call.path == "$batch" and call.method == "POST":
        return "$batch"
    op = operation(call)
    if op in BULK or op == "read":
        return op
    return "single"


def charge(call: Call, reply: Reply, settings: Settings) -> tuple[str, float]:
    """(stats bucket, execution milliseconds) for a top-level request and its reply."""
    where = bucket(call)
    if settings.cost_model == "flat":
        return where, settings.latency_ms + settings.per_record_ms * reply.records
    costs = settings.costs
    if where == "$batch":
        return where, costs["batch"] + sum(_dataverse(c, r, costs) for c, r in reply.parts)
    return where, _dataverse(call, reply, costs)


def _dataverse(call: Call, reply: Reply, costs: dict[str, float]) -> float:
    op = operation(call)
    if op == "read":
        return costs["read_page"] + costs["read_row"] * reply.records
    if op in BULK:
        per_record = costs[op.replace("Multiple", "").lower() + "_multiple_record"]
        return costs["multiple_request"] + per_record * _targets(call, reply)
    return costs[op]


def _targets(call: Call, reply: Reply) -> int:
    if reply.status < 400 or reply.records:
        # Refused: the targets executed up to the failing one, which Dataverse then
        # rolled back (a standard table fails the whole request, bulk-operations.md;
        # that it stops at the first failure is inferred).
        return reply.records
    try:
        body = json.loads(call.body)
    except ValueError:
        return 0
    targets = body.get("Targets") if isinstance(body, dict) else None
    return len(targets) if isinstance(targets, list) else 0
