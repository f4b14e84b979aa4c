"""One record's two sides, field by field. Pure: data in, comparison out.

Values are compared in the one form crmsync keeps and sends (``convert.to_dataverse``
of the local value, ``convert.canonical`` of Dynamics'), so ``1.5`` and ``1.50``, or
two spellings of one instant, are the same. A lookup is compared as the local id of its
target (Dynamics' GUID resolved through ``parents``; unresolved, the GUID stays and
differs). A value that does not fit its field is kept as it is, and so differs. Used by
``GET /api/v1/records/{object}/{id}/compare``; its two value forms (``local_json``,
``dynamics_json``) by the drift audit's ``engine/compare.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from crmsync.domain import FieldSpec, FieldType, ObjectSpec
from crmsync.mapping.convert import DoesNotFit, canonical, encoder


@dataclass(frozen=True)
class FieldComparison:
    field: str
    local: Any
    dynamics: Any
    last_synced: Any
    same: bool

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def local_json(field: FieldSpec | None, value: Any) -> Any:
    """A local value in the JSON form crmsync compares (as it is if it does not fit)."""
    if field is None or field.type is FieldType.LOOKUP or value is None:
        return value
    with contextlib.suppress(DoesNotFit):
        return encoder(field)(value)
    return value


def dynamics_json(field: FieldSpec | None, value: Any) -> Any:
    """Dynamics' JSON value in its canonical form (as it is if it does not fit)."""
    if field is None or field.type is FieldType.LOOKUP or value is None:
        return value
    with contextlib.suppress(DoesNotFit):
        return canonical(field, value)
    return value


def _dynamics_form(
    spec: ObjectSpec,
    column: str,
    row: Mapping[str, Any],
    parents: Mapping[tuple[str, str], int],
) -> Any:
    for lk in spec.lookups:
        if lk.column == column:
            crm_id = row.get(lk.value_attribute)
            if not crm_id:
                return None
            return parents.get((lk.target, str(crm_id).lower()), str(crm_id).lower())
    return dynamics_json(spec.field_specs.get(column), row.get(spec.fields[column]))


def compare_fields(
    spec: ObjectSpec,
    local: Mapping[str, Any] | None,
    dynamics: Mapping[str, Any] | None,
    synced: Mapping[str, Any] | None,
    parents: Mapping[tuple[str, str], int] | None = None,
) -> list[FieldComparison]:
    """Every mapped column of ``spec``: the local row's value, Dynamics' row's (its
    Web API JSON; None when the record is missing there), the last synced value."""
    out = []
    for column in spec.columns:
        mine = local_json(spec.field_specs.get(column), (local or {}).get(column))
        theirs = _dynamics_form(spec, column, dynamics, parents or {}) if dynamics else None
        base = (synced or {}).get(column)
        same = local is not None and dynamics is not None and mine == theirs
        out.append(FieldComparison(column, mine, theirs, base, same))
    return out


def in_sync(fields: list[FieldComparison]) -> bool:
    return all(f.same for f in fields)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


_BASE: dict[int, tuple[ObjectSpec, list[tuple[str, FieldSpec | None, bool]]]] = {}


def _base_fields(spec: ObjectSpec) -> list[tuple[str, FieldSpec | None, bool]]:
    """(column, field, is_lookup) of every mapped column, worked out once per spec."""
    cached = _BASE.get(id(spec))
    if cached is not None and cached[0] is spec:
        return cached[1]
    fields = []
    for column in spec.columns:
        field = spec.field_specs.get(column)
        lookup = column not in spec.fields or (field is not None and field.type is FieldType.LOOKUP)
        fields.append((column, field, lookup))
    _BASE[id(spec)] = (spec, fields)
    return fields


def differs_from_base(
    spec: ObjectSpec, local: Mapping[str, Any], base: Mapping[str, Any] | None
) -> list[str]:
    """The mapped columns (lookups included) whose local value differs from the last
    synced one; every column when nothing was synced. A column the base lacks is left
    out (it was mapped after the last sync)."""
    if base is None:
        return list(spec.columns)
    changed = []
    for column, field, lookup in _base_fields(spec):
        if column not in base:
            continue
        kept, value = base[column], local.get(column)
        if lookup:  # both hold the parent's local id
            if _text(value) != _text(kept):
                changed.append(column)
            continue
        if value == kept:  # the common case (text as kept): no conversion needed
            continue
        mine = local_json(field, value)
        # The base is kept in the canonical form already: only a mismatch is looked at
        # again in it (a base written by an older version may spell a value otherwise).
        if mine != kept and mine != dynamics_json(field, kept):
            changed.append(column)
    return changed
