"""Alternate keys: ``leads(emailaddress1='a@b.c')`` for GET, PATCH (upsert) and DELETE,
``UpsertMultiple`` targets by ``@odata.id``, uniqueness, and their ``Keys`` metadata.

Dataverse defines no alternate key on the standard columns the emulator serves
(reference section 3), so none exists until ``PUT /_emulator/config
{"alternate_keys": {"leads": [["emailaddress1"]]}}`` declares one (a list of column
lists per entity set). Rules from ``use-upsert-insert-update-record.md``: an upsert by
key that finds no row creates one with the key values from the URL unless the body sets
them; one that finds a row ignores key columns in the body. Codes from reference
section 5: ``0x80060891`` for a key that is not defined (or finds no row on GET and
DELETE), ``0x80060892`` (412) for a write that would duplicate a key.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from crmsync.emulator import faults
from crmsync.emulator.conditions import coerce, column
from crmsync.emulator.model import LOOKUP, Attribute, Entity
from crmsync.emulator.store import Store

Row = dict[str, Any]
_PAIR_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^']|'')*'|[^,']+)\s*(?:,|$)")


def key_name(entity: Entity, columns: list[str]) -> str:
    return f"{entity.logical}_{'_'.join(columns)}_key"


def parse_pairs(text: str) -> dict[str, str] | None:
    """``emailaddress1='a@b.c',x=2`` -> {"emailaddress1": "a@b.c", "x": "2"}; None if not."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _PAIR_RE.match(text, pos)
        if m is None or m.end() == pos:
            return None
        raw = m.group(2).strip()
        out[m.group(1)] = raw[1:-1].replace("''", "'") if raw.startswith("'") else raw
        pos = m.end()
    return out or None


def defined(entity: Entity, declared: dict[str, list[list[str]]]) -> list[list[str]]:
    return declared.get(entity.entity_set, [])


def resolve(
    entity: Entity, pairs: dict[str, str], declared: dict[str, list[list[str]]], store: Store
) -> tuple[str | None, Row]:
    """(primary key of the row the key finds, or None; the key's typed column values)."""
    for columns in defined(entity, declared):
        if set(columns) == set(pairs):
            values: Row = {}
            for name in columns:
                attr = _attr(entity, name)
                values[attr.name] = coerce(entity, attr, pairs[name])
            return find(entity, values, store), values
    name = next(iter(pairs))
    raise faults.DataverseFault(
        400,
        "0x80060891",
        f"The key attribute '{name}' is not defined as an alternate key for entity "
        f"'{entity.logical}'.",
    )


def find(entity: Entity, values: Row, store: Store, skip: str | None = None) -> str | None:
    wanted = {k: _fold(v) for k, v in values.items()}
    for row in store.tables[entity.entity_set].rows.values():
        if row[entity.primary_id] != skip and all(
            _fold(row.get(k)) == v for k, v in wanted.items()
        ):
            return str(row[entity.primary_id])
    return None


def not_found(entity: Entity) -> faults.DataverseFault:
    return faults.DataverseFault(
        404,
        "0x80060891",
        f"A record with the specified key values does not exist in {entity.logical} entity",
    )


def check_unique(
    entity: Entity, row: Row, declared: dict[str, list[list[str]]], store: Store
) -> None:
    """Raise Dataverse's 412 if ``row`` would share a key's values with another row."""
    for columns in defined(entity, declared):
        attrs = [_attr(entity, c) for c in columns]
        values = {a.name: row.get(a.name) for a in attrs}
        if any(v is None for v in values.values()):
            continue  # a key is enforced only on rows that have all its values (inferred)
        if find(entity, values, store, skip=row[entity.primary_id]) is not None:
            raise faults.DataverseFault(
                412,
                "0x80060892",
                f"Entity Key {key_name(entity, columns)} violated. A record with the same "
                f"value for {', '.join(columns)} already exists",
            )


def metadata_rows(entity: Entity, declared: dict[str, list[list[str]]]) -> list[Row]:
    rows = []
    for columns in defined(entity, declared):
        name = key_name(entity, columns)
        rows.append(
            {
                "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"crmsync-emulator/key/{name}")),
                "LogicalName": name,
                "SchemaName": name,
                "EntityLogicalName": entity.logical,
                "KeyAttributes": list(columns),
                "EntityKeyIndexStatus": "Active",
            }
        )
    return rows


def valid_declaration(value: Any, entities: dict[str, Entity]) -> bool:
    """The ``alternate_keys`` setting: {entity set: [[column, ...], ...]} of real columns."""
    if not isinstance(value, dict):
        return False
    for entity_set, keys in value.items():
        entity = entities.get(entity_set)
        if entity is None or not isinstance(keys, list):
            return False
        for columns in keys:
            if not isinstance(columns, list) or not columns:
                return False
            for name in columns:
                attr = column(entity, name) if isinstance(name, str) else None
                if attr is None or name == entity.primary_id or attr.type == LOOKUP:
                    return False
    return True


def _attr(entity: Entity, name: str) -> Attribute:
    attr = column(entity, name)
    if attr is None:
        raise faults.unknown_property(entity.logical, name)
    return attr


def _fold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value
