"""``$ref``: associate and disassociate records (``webapi/associate-disassociate-entities-
using-web-api.md``).

- single-valued: ``PUT contacts(<id>)/parentcustomerid_account/$ref`` with
  ``{"@odata.id": "<root>/accounts(<id>)"}`` sets the lookup; ``DELETE`` clears it;
- collection-valued: ``POST accounts(<id>)/contact_customer_accounts/$ref`` with the
  contact's ``@odata.id`` points that contact at the account; ``DELETE
  accounts(<id>)/contact_customer_accounts(<contactid>)/$ref`` (or ``/$ref?$id=<url>``)
  clears it;
- ``GET .../$ref`` answers the references (``@odata.id``) instead of the rows.

Each change is an ordinary update of the row that holds the lookup (new version, etag).
Lookups only the system sets (``createdby``) can't be changed this way.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from crmsync.emulator import expand, faults
from crmsync.emulator.http import Call, Reply, split_api_path
from crmsync.emulator.model import Entity, is_guid, normalize_guid
from crmsync.emulator.records import Writer
from crmsync.emulator.store import Store

_ID_RE = re.compile(r"([A-Za-z_]+)\(([0-9a-fA-F-]{36})\)$")


def handle(
    store: Store, writer: Writer, nav: expand.Nav, row: dict[str, Any], member: str | None,
    call: Call,
) -> Reply:  # fmt: skip
    entity = nav.source
    if call.method == "GET" and member is None:
        return _read(store, nav, row, call)
    if not nav.many:
        if member is not None or call.method not in ("PUT", "DELETE"):
            raise faults.no_resource(call.base + call.path)
        target = _target(call, nav.target) if call.method == "PUT" else None
        bind = f"/{nav.target.entity_set}({target})" if target else None
        writer.update(entity, row, {f"{_bindable(nav)}@odata.bind": bind}, call)
        return Reply.empty(204, 1)
    # Collection-valued: the change lands on the related (referencing) row.
    source_key = row[entity.primary_id]
    if call.method == "POST" and member is None:
        child_key = _target(call, nav.target)
    elif call.method == "DELETE":
        child_key = member or _target(call, nav.target, query_id=True)
    else:
        raise faults.no_resource(call.base + call.path)
    child = store.get(nav.target.entity_set, child_key)
    if child is None:
        raise faults.not_found(nav.target.logical, child_key)
    if call.method == "DELETE":
        if child.get(nav.lookup.name) != source_key:
            raise faults.not_found(nav.target.logical, child_key)  # (inferred) not associated
        bind = None
    else:
        bind = f"/{entity.entity_set}({source_key})"
    reverse = nav.lookup.navigation
    if reverse is None:
        raise _read_only(nav)
    writer.update(nav.target, child, {f"{reverse}@odata.bind": bind}, call)
    return Reply.empty(204, 1)


def _read(store: Store, nav: expand.Nav, row: dict[str, Any], call: Call) -> Reply:
    context = f"{call.base}$metadata#$ref"
    if not nav.many:
        key = row.get(nav.lookup.name)
        if key is None:
            return Reply.empty(204, 1)
        ref = f"{call.base}{nav.target.entity_set}({key})"
        return Reply.json(200, {"@odata.context": context, "@odata.id": ref}, 1)
    exp = expand.options_for(nav, dict(call.query))
    rows = (expand.index_for(exp, store) or {}).get(row[nav.source.primary_id], [])
    pk = nav.target.primary_id
    refs = [{"@odata.id": f"{call.base}{nav.target.entity_set}({r[pk]})"} for r in rows]
    return Reply.json(200, {"@odata.context": context, "value": refs}, len(refs))


def _bindable(nav: expand.Nav) -> str:
    if nav.lookup.navigation is None:
        raise _read_only(nav)
    return nav.lookup.navigation


def _read_only(nav: expand.Nav) -> faults.DataverseFault:
    return faults.bad_payload(
        nav.target.entity_set,
        f"Microsoft.OData.ODataException: the navigation property '{nav.name}' can't be "
        "changed; the system sets it.",
    )


def _target(call: Call, target: Entity, *, query_id: bool = False) -> str:
    """The key in the body's ``@odata.id`` (or the ``$id`` query option)."""
    if query_id:
        ref = call.query.get("$id")
    else:
        try:
            body = json.loads(call.body or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise faults.bad_payload(target.entity_set, f"Invalid JSON. {exc}") from exc
        ref = body.get("@odata.id") if isinstance(body, dict) else None
    if not isinstance(ref, str):
        raise faults.bad_payload(target.entity_set, 'a reference needs {"@odata.id": "<url>"}.')
    path = urlsplit(ref).path if "://" in ref else ref
    inside = split_api_path(path)
    path = inside[1] if inside else path.lstrip("/")
    m = _ID_RE.fullmatch(path)
    if m is None or m.group(1) != target.entity_set or not is_guid(m.group(2)):
        raise faults.bad_payload(
            target.entity_set, f"the reference '{ref}' is not a record of '{target.entity_set}'."
        )
    return normalize_guid(m.group(2))
