"""Record writes: create, update, upsert, delete and the bulk messages.

Semantics from ``create-entity-web-api.md``, ``perform-conditional-operations-using-web-api.md``
and ``use-upsert-insert-update-record.md`` (reference section 3): PATCH upserts unless
``If-Match`` is given, ``If-None-Match: *`` makes it create-only, weak ETags carry the
``versionnumber``, which every write raises.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from crmsync.emulator import faults, keys
from crmsync.emulator.annotations import annotate, applied
from crmsync.emulator.http import Call, Reply, etag
from crmsync.emulator.model import LOOKUP, Entity, computed, is_guid, normalize_guid, validate_value
from crmsync.emulator.odata import format_datetime, parse_prefer
from crmsync.emulator.settings import Settings
from crmsync.emulator.store import Store

_BIND_RE = re.compile(r"(?:^|/)([A-Za-z_]+)\(([0-9a-fA-F-]{36})\)$")


def _no_constant(name: str) -> Any:
    """JSON has no NaN or Infinity (Python's parser takes them): invalid JSON."""
    raise ValueError(f"'{name}' is not a JSON value")


def parse_body(call: Call, entity_set: str) -> dict[str, Any]:
    try:
        body = json.loads(call.body or b"{}", parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise faults.bad_payload(
            entity_set, f"Microsoft.OData.ODataException: Invalid JSON. {exc}"
        ) from exc
    if not isinstance(body, dict):
        raise faults.bad_payload(
            entity_set,
            "Microsoft.OData.ODataException: An entity was expected but a value was found.",
        )
    return body


def represent(entity: Entity, row: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"@odata.etag": etag(row)}
    names = select if select is not None else list(entity.attributes)
    for name in names:
        out[name] = row.get(name)
    return out


class Writer:
    """Applies writes for one caller; raises ``DataverseFault`` the way Dataverse fails."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    # -- single records ------------------------------------------------------------

    def create(
        self, entity: Entity, body: dict[str, Any], call: Call, key: str | None = None
    ) -> dict[str, Any]:
        pk = entity.primary_id
        supplied = body.get(pk)
        if supplied is not None:
            if not isinstance(supplied, str) or not is_guid(supplied):
                raise faults.bad_payload(
                    entity.entity_set,
                    f"Cannot convert the literal '{supplied}' to the expected type 'Edm.Guid'.",
                )
            key = key or normalize_guid(supplied)
        key = key or str(uuid.uuid4())
        if self.store.get(entity.entity_set, key) is not None:
            # "Cannot insert duplicate key." is listed under 412 DuplicateRecord (compose docs).
            raise faults.DataverseFault(412, "0x80040237", "Cannot insert duplicate key.")
        row: dict[str, Any] = {pk: key}
        self._apply(entity, row, body, creating=True)
        now = format_datetime(datetime.now(UTC))
        row["createdon"] = row["modifiedon"] = now
        row["_createdby_value"] = row["_modifiedby_value"] = call.user_id
        self._check_duplicate(entity, row, call)
        keys.check_unique(entity, row, self.settings.alternate_keys, self.store)
        row["versionnumber"] = self.store.next_version()
        self.store.put(entity.entity_set, row)
        return row

    def update(
        self, entity: Entity, old: dict[str, Any], body: dict[str, Any], call: Call
    ) -> dict[str, Any]:
        row = dict(old)
        self._apply(entity, row, body, creating=False)
        row["modifiedon"] = format_datetime(datetime.now(UTC))
        row["_modifiedby_value"] = call.user_id
        self._check_duplicate(entity, row, call)
        keys.check_unique(entity, row, self.settings.alternate_keys, self.store)
        row["versionnumber"] = self.store.next_version()
        self.store.put(entity.entity_set, row)
        return row

    def patch(
        self,
        entity: Entity,
        key: str,
        call: Call,
        key_values: dict[str, Any] | None = None,
        location: str | None = None,
    ) -> Reply:
        """PATCH as upsert. ``key_values`` are an alternate key's columns from the URL:
        a create takes them unless the body sets them, an update ignores them in the
        body (use-upsert-insert-update-record.md); ``location`` is the URL's key form."""
        body = parse_body(call, entity.entity_set)
        key_values = key_values or {}
        prefer = parse_prefer(call.header("prefer"))
        if_match = _condition(call.header("if-match"))
        if_none_match = _condition(call.header("if-none-match"))
        old = self.store.get(entity.entity_set, key)
        if old is None:
            if if_match is not None:
                raise faults.not_found(entity.logical, key)
            row = self.create(entity, {**key_values, **body}, call, key=key)
            status = 201
        else:
            if if_none_match == "*":
                raise faults.already_exists()
            if if_match not in (None, "*") and if_match != etag(old):
                raise faults.version_mismatch()
            kept = {k: v for k, v in body.items() if k not in key_values}
            row = self.update(entity, old, kept, call)
            status = 200
        location = f"{call.base}{entity.entity_set}({location or key})"
        if prefer.representation:
            body = annotate(entity, represent(entity, row, None), prefer, self.store)
            reply = Reply.json(status, body, 1, ETag=etag(row))
            if applied(prefer):
                reply.headers["Preference-Applied"] = applied(prefer) or ""
            return reply
        return Reply.empty(204, 1, OData_EntityId=location, ETag=etag(row))

    def delete(self, entity: Entity, key: str, call: Call) -> Reply:
        old = self.store.get(entity.entity_set, key)
        if old is None:
            raise faults.not_found(entity.logical, key)
        if_match = _condition(call.header("if-match"))
        if if_match not in (None, "*") and if_match != etag(old):
            raise faults.version_mismatch()
        self.store.delete(entity.entity_set, key)
        return Reply.empty(204, 1)

    # -- bulk messages (bulk-operations.md): all targets or none ---------------------

    def bulk(self, entity: Entity, message: str, call: Call) -> Reply:
        body = parse_body(call, entity.entity_set)
        targets = body.get("Targets")
        if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
            raise faults.bad_payload(
                entity.entity_set,
                "Microsoft.OData.ODataException: 'Targets' must be an array of entities.",
            )
        wanted = f"Microsoft.Dynamics.CRM.{entity.logical}"
        for target in targets:
            if target.get("@odata.type") != wanted:
                raise faults.bad_payload(
                    entity.entity_set,
                    f'Microsoft.OData.ODataException: each target needs "@odata.type": "{wanted}".',
                )
        ids: list[str] = []
        results: list[dict[str, Any]] = []
        for done, target in enumerate(targets):
            try:
                self._bulk_target(entity, message, target, call, ids, results)
            except faults.DataverseFault as fault:
                # Executed up to this target, then rolled back (charged that far).
                fault.processed = done + 1
                raise
        context = f"{call.base}$metadata#Microsoft.Dynamics.CRM.{message}Response"
        if message == "CreateMultiple":
            return Reply.json(200, {"@odata.context": context, "Ids": ids}, len(ids))
        if message == "UpsertMultiple":
            return Reply.json(200, {"@odata.context": context, "Results": results}, len(results))
        return Reply.empty(204, len(targets))

    # -- helpers -------------------------------------------------------------------

    def _bulk_target(
        self,
        entity: Entity,
        message: str,
        target: dict[str, Any],
        call: Call,
        ids: list[str],
        results: list[dict[str, Any]],
    ) -> None:
        if message == "CreateMultiple":
            ids.append(self.create(entity, target, call)[entity.primary_id])
            return
        key, by_key = self._target_key(entity, target)
        if key is None and by_key is None:
            raise faults.bad_payload(
                entity.entity_set,
                f"Microsoft.OData.ODataException: target lacks '{entity.primary_id}'.",
            )
        old = self.store.get(entity.entity_set, key) if key else None
        if old is not None:
            kept = {k: v for k, v in target.items() if k not in (by_key or {})}
            self.update(entity, old, kept, call)
            results.append({"RecordCreated": False, "Id": key})
        elif message == "UpdateMultiple":
            raise faults.not_found(entity.logical, key) if key else keys.not_found(entity)
        else:
            row = self.create(entity, {**(by_key or {}), **target}, call, key=key)
            results.append({"RecordCreated": True, "Id": row[entity.primary_id]})

    def _target_key(
        self, entity: Entity, target: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any] | None]:
        """(primary key, alternate-key values): by the key column, ``@odata.id`` with a
        GUID, or ``@odata.id`` with an alternate key (``leads(emailaddress1='x')``)."""
        key = target.get(entity.primary_id)
        odata_id = target.get("@odata.id")
        if key is None and isinstance(odata_id, str):
            m = _BIND_RE.search(odata_id)
            if m is None:
                return self._by_alternate_key(entity, odata_id)
            key = m.group(2)
        if key is None:
            return None, None
        if not isinstance(key, str) or not is_guid(key):
            raise faults.bad_payload(
                entity.entity_set,
                f"Cannot convert the literal '{key}' to the expected type 'Edm.Guid'.",
            )
        return normalize_guid(key), None

    def _by_alternate_key(
        self, entity: Entity, odata_id: str
    ) -> tuple[str | None, dict[str, Any] | None]:
        m = re.search(r"(?:^|/)([A-Za-z_]+)\((.*)\)$", odata_id)
        pairs = keys.parse_pairs(m.group(2)) if m and m.group(1) == entity.entity_set else None
        if pairs is None:
            raise faults.bad_payload(
                entity.entity_set,
                f"Microsoft.OData.ODataException: '{odata_id}' is not a key of "
                f"'{entity.entity_set}'.",
            )
        return keys.resolve(entity, pairs, self.settings.alternate_keys, self.store)

    def _apply(
        self, entity: Entity, row: dict[str, Any], body: dict[str, Any], *, creating: bool
    ) -> None:
        navigations = entity.navigations
        for name, value in body.items():
            if name.endswith("@odata.bind"):
                nav = name[: -len("@odata.bind")]
                attr = navigations.get(nav)
                if attr is None:
                    raise faults.bad_payload(
                        entity.entity_set,
                        "Microsoft.OData.ODataException: An undeclared property "
                        f"'{nav}' which only has property annotations in the payload but no "
                        "property value was found in the payload.",
                    )
                row[attr.name] = self._bind(entity, attr.target or "", value)
                continue
            if "@" in name:
                continue  # @odata.type, @odata.id, formatted-value annotations
            attr = entity.attributes.get(name)
            if attr is None or attr.type == LOOKUP:
                raise faults.invalid_body_property(entity.logical, name)
            if name == entity.primary_id:
                if not creating and value is not None and str(value).lower() != row[name]:
                    raise faults.bad_payload(
                        entity.entity_set,
                        "Microsoft.OData.ODataException: the primary key cannot change.",
                    )
                continue
            if not attr.writable:
                continue  # Dataverse ignores columns that are not valid for create/update
            row[name] = validate_value(entity, attr, value)
        computed(entity, row)

    def _bind(self, entity: Entity, target: str, value: Any) -> str | None:
        if value is None:
            return None
        m = _BIND_RE.search(value) if isinstance(value, str) else None
        if m is None or m.group(1) != target:
            raise faults.bad_payload(
                entity.entity_set,
                f"Microsoft.OData.ODataException: the @odata.bind value '{value}' is not a "
                f"reference to '{target}'.",
            )
        key = normalize_guid(m.group(2))
        if self.store.get(target, key) is None:
            from crmsync.emulator.model import ENTITIES

            raise faults.not_found(ENTITIES[target].logical, key)
        return key

    def _check_duplicate(self, entity: Entity, row: dict[str, Any], call: Call) -> None:
        # Duplicate detection runs only when the caller asks for it
        # (manage-duplicate-detection-create-update.md) and rules are published.
        if not self.settings.duplicate_detection or entity.logical not in ("lead", "contact"):
            return
        if (call.header("mscrm.suppressduplicatedetection") or "").lower() != "false":
            return
        email = row.get("emailaddress1")
        if not email:
            return
        wanted = email.casefold()
        pk = entity.primary_id
        for other in self.store.tables[entity.entity_set].rows.values():
            mail = other.get("emailaddress1")
            if mail and mail.casefold() == wanted and other[pk] != row[pk]:
                raise faults.duplicate_detected()


def _condition(value: str | None) -> str | None:
    # Clients send "If-None-Match: null" on every request (compose docs); it means none.
    if value is None or value.strip().lower() in ("", "null"):
        return None
    return value.strip()
