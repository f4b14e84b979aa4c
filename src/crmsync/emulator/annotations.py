"""``Prefer: odata.include-annotations``: formatted values and lookup annotations on rows.

From ``webapi/compose-http-requests-handle-errors.md`` and ``query/select-columns.md``:
``<col>@OData.Community.Display.V1.FormattedValue`` for choices (the label), yes/no
columns, date-times and lookups (the related row's primary name); lookups also get
``@Microsoft.Dynamics.CRM.lookuplogicalname`` and ``...associatednavigationproperty``.
Annotations precede their property and are left out for null values. The response says
``Preference-Applied: odata.include-annotations="..."``. Inferred (not documented): dates
are formatted for an en-US user in UTC (``12/1/2026 8:24 PM``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crmsync.emulator.conditions import logical_name
from crmsync.emulator.model import (
    BOOLEAN,
    DATETIME,
    ENTITIES,
    LOOKUP,
    MULTISELECT,
    PICKLIST,
    Entity,
    choice_values,
)
from crmsync.emulator.odata import Prefer
from crmsync.emulator.store import Store

FORMATTED = "OData.Community.Display.V1.FormattedValue"
LOGICAL = "Microsoft.Dynamics.CRM.lookuplogicalname"
NAVIGATION = "Microsoft.Dynamics.CRM.associatednavigationproperty"


def applied(prefer: Prefer) -> str | None:
    """The ``Preference-Applied`` item echoing the caller's list, or None."""
    if not prefer.annotations:
        return None
    return f'odata.include-annotations="{",".join(prefer.annotations_raw)}"'


def annotate(
    entity: Entity, shaped: dict[str, Any], prefer: Prefer, store: Store
) -> dict[str, Any]:
    """``shaped`` (a row as ``represent`` returns it) with the asked-for annotations."""
    if not prefer.annotations:
        return shaped
    want_formatted = prefer.wants(FORMATTED)
    want_logical, want_nav = prefer.wants(LOGICAL), prefer.wants(NAVIGATION)
    out: dict[str, Any] = {}
    for name, value in shaped.items():
        attr = entity.attributes.get(name)
        if attr is not None and value is not None:
            if want_formatted:
                text = formatted(attr.type, attr, value, store)
                if text is not None:
                    out[f"{name}@{FORMATTED}"] = text
            if attr.type == LOOKUP and attr.target:
                if want_nav:
                    out[f"{name}@{NAVIGATION}"] = attr.navigation or logical_name(attr)
                if want_logical:
                    out[f"{name}@{LOGICAL}"] = ENTITIES[attr.target].logical
        out[name] = value
    return out


def formatted(kind: str, attr: Any, value: Any, store: Store) -> str | None:
    if kind == PICKLIST:
        return next((label for v, label in attr.options if v == value), None)
    if kind == MULTISELECT and isinstance(value, str):
        # "a semi-colon separated string containing the labels" ("Hiking; Fishing").
        labels = dict(attr.options)
        chosen = choice_values(value) or []
        return "; ".join(labels[v] for v in chosen if v in labels) or None
    if kind == BOOLEAN:
        return "Yes" if value else "No"
    if kind == DATETIME and isinstance(value, str):
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        hour = moment.hour % 12 or 12
        half = "AM" if moment.hour < 12 else "PM"
        return f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment.minute:02d} {half}"
    if kind == LOOKUP and attr.target:
        target = ENTITIES[attr.target]
        row = store.get(attr.target, value)
        name = row.get(target.primary_name) if row is not None else None
        return str(name) if name is not None else None
    return None
