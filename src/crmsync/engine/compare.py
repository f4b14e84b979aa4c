"""One record's two sides, field by field: the local row against Dynamics' JSON. Pure.

``compare_record`` is the comparison the drift audit, a dry-run resync and the record
page's comparison use: for each mapped field of an ``ObjectSpec`` (every field, whatever
its flow: both sides should hold the same value), the local value in its Dataverse JSON
form (``mapping/convert.to_dataverse``) against Dynamics' value in its canonical form
(``convert.canonical``), so that ``1.50`` and ``1.5`` of a decimal, or a datetime's two
spellings, are equal. A value that does not convert is compared as it is (and so
differs). Lookups compare the parent's Dynamics id, when the caller gives the parents'
ids; without them lookups are left out.

``differs_from_base`` (``mapping/compare.py``, where the store's fold uses it too) says
which fields a local row changed since the values both sides agreed on at the last sync
(``sync_record.synced_values``, kept in the same JSON form).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crmsync.domain import ObjectSpec
from crmsync.mapping.compare import differs_from_base, dynamics_json, local_json

__all__ = ["FieldDifference", "Parents", "compare_record", "differs_from_base"]

# The parents' Dynamics ids: (target object, local id) -> crm_id (None: not in Dynamics).
Parents = Mapping[tuple[str, int], str | None]


@dataclass(frozen=True)
class FieldDifference:
    """One mapped field whose two sides differ, both in their JSON form."""

    field: str  # the local column
    attribute: str  # the Dataverse attribute
    local: Any
    dynamics: Any

    def as_json(self) -> dict[str, Any]:
        return {"field": self.field, "local": _plain(self.local), "dynamics": _plain(self.dynamics)}


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _same_id(a: Any, b: Any) -> bool:
    return (str(a).lower() if a is not None else None) == (str(b).lower() if b else None)


def compare_record(
    spec: ObjectSpec,
    local: Mapping[str, Any],
    dynamics: Mapping[str, Any],
    parents: Parents | None = None,
) -> list[FieldDifference]:
    """The mapped fields whose local value differs from Dynamics' (empty: they agree).

    ``local`` is the local row by column; ``dynamics`` the record as Dataverse returns it
    (attributes, lookups as ``_x_value``). A field ``dynamics`` lacks is not compared."""
    out: list[FieldDifference] = []
    types = spec.field_specs
    for column, attribute in spec.fields.items():
        if attribute not in dynamics:
            continue
        field = types.get(column)
        mine, theirs = (
            local_json(field, local.get(column)),
            dynamics_json(field, dynamics[attribute]),
        )
        if mine != theirs:
            out.append(FieldDifference(column, attribute, mine, theirs))
    if parents is None:
        return out
    for lk in spec.lookups:
        if lk.value_attribute not in dynamics:
            continue
        target_id = local.get(lk.column)
        mine = parents.get((lk.target, int(target_id))) if target_id is not None else None
        theirs = dynamics[lk.value_attribute]
        if not _same_id(mine, theirs):
            out.append(FieldDifference(lk.column, lk.value_attribute, mine, theirs))
    return out
