"""The environment's table definitions, read for ``crmsync mapping check``, and the
options of a table's Choice columns, read by a worker at start (``read_choice_options``).

One request for each table's own properties and its attributes, and one per attribute
type whose properties are not on the base type (Dataverse refuses ``$select`` of a
derived type's property on ``AttributeMetadata``: query-metadata-web-api, "Retrieving
attributes"). A table the environment does not have is ``None``. The tables are read at
once, and a table's typed reads at once after its first (a worker's start waits for
two round trips, not six per table).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crmsync.errors import RecordRejected

if TYPE_CHECKING:  # the definitions below are plain data, usable without a client
    from crmsync.dynamics.client import DataverseClient

_CAST = "Microsoft.Dynamics.CRM."
# (derived attribute type, its properties to select, an expansion)
_TYPED = (
    ("StringAttributeMetadata", "LogicalName,MaxLength", ""),
    ("MemoAttributeMetadata", "LogicalName,MaxLength", ""),
    ("PicklistAttributeMetadata", "LogicalName", "&$expand=OptionSet($select=Options)"),
    ("LookupAttributeMetadata", "LogicalName,Targets", ""),
    ("DateTimeAttributeMetadata", "LogicalName,Format,DateTimeBehavior", ""),
)


@dataclass
class AttributeInfo:
    name: str
    type: str  # AttributeType: String, Memo, Integer, Decimal, Money, Boolean, DateTime, ...
    valid_for_create: bool = True
    valid_for_update: bool = True
    max_length: int | None = None
    options: tuple[int, ...] | None = None  # a choice's option values
    labels: tuple[str, ...] = ()  # their labels, in the same order
    targets: tuple[str, ...] = ()  # a lookup's tables
    date_only: bool = False


@dataclass
class TableInfo:
    logical_name: str
    entity_set: str | None
    primary_id: str | None
    change_tracking: bool
    attributes: dict[str, AttributeInfo] = field(default_factory=dict)


async def read_tables(
    client: DataverseClient, logical_names: Iterable[str]
) -> dict[str, TableInfo | None]:
    names = list(dict.fromkeys(logical_names))
    tables = await asyncio.gather(*(read_table(client, name) for name in names))
    return dict(zip(names, tables, strict=True))


async def read_table(client: DataverseClient, logical_name: str) -> TableInfo | None:
    base = f"EntityDefinitions(LogicalName='{logical_name}')"
    try:
        data = await client.get_json(
            f"{base}?$select=LogicalName,EntitySetName,PrimaryIdAttribute,ChangeTrackingEnabled"
            "&$expand=Attributes($select=LogicalName,AttributeType,IsValidForCreate,"
            "IsValidForUpdate)"
        )
    except RecordRejected as exc:
        if exc.status == 404:
            return None
        raise
    table = TableInfo(
        logical_name=str(data.get("LogicalName") or logical_name),
        entity_set=data.get("EntitySetName"),
        primary_id=data.get("PrimaryIdAttribute"),
        change_tracking=bool(data.get("ChangeTrackingEnabled")),
    )
    for row in data.get("Attributes") or []:
        name = str(row.get("LogicalName"))
        table.attributes[name] = AttributeInfo(
            name=name,
            type=str(row.get("AttributeType")),
            valid_for_create=row.get("IsValidForCreate") is not False,
            valid_for_update=row.get("IsValidForUpdate") is not False,
        )
    typed = await asyncio.gather(
        *(
            client.get_json(f"{base}/Attributes/{_CAST}{cast}?$select={select}{expand}")
            for cast, select, expand in _TYPED
        )
    )
    for rows in typed:
        for row in rows.get("value") or []:
            attr = table.attributes.get(str(row.get("LogicalName")))
            if attr is not None:
                _typed(attr, row)
    return table


Options = tuple[tuple[int, str], ...]  # a choice's (option value, label) pairs


async def read_choice_options(client: DataverseClient, logical_name: str) -> dict[str, Options]:
    """Every Choice column of the table ``logical_name`` with its options, in Dynamics'
    order; ``RecordRejected`` (404) for a table the environment does not have. A choice
    bound to a global choice carries its options in ``GlobalOptionSet`` (query-metadata-
    web-api, "Retrieving attributes")."""
    data = await client.get_json(
        f"EntityDefinitions(LogicalName='{logical_name}')/Attributes/{_CAST}"
        "PicklistAttributeMetadata?$select=LogicalName"
        "&$expand=OptionSet($select=Options),GlobalOptionSet($select=Options)"
    )
    return {str(row.get("LogicalName")): _options(row) for row in data.get("value") or []}


def _options(row: dict[str, Any]) -> Options:
    found = (row.get("OptionSet") or {}).get("Options") or (row.get("GlobalOptionSet") or {}).get(
        "Options"
    )
    return tuple(
        (int(o["Value"]), _label(o.get("Label"))) for o in found or [] if o.get("Value") is not None
    )


def _label(label: Any) -> str:
    """The text of a Label: the caller's language (``UserLocalizedLabel``; an application
    user's is the organisation's base language), else the first localized one."""
    if not isinstance(label, dict):
        return ""
    mine: Any = label.get("UserLocalizedLabel") or next(
        iter(label.get("LocalizedLabels") or []), None
    )
    return str(mine.get("Label") or "") if isinstance(mine, dict) else ""


def _typed(attr: AttributeInfo, row: dict[str, Any]) -> None:
    if "MaxLength" in row and row["MaxLength"] is not None:
        attr.max_length = int(row["MaxLength"])
    if "OptionSet" in row:
        options = _options(row)
        attr.options = tuple(v for v, _ in options)
        attr.labels = tuple(text for _, text in options)
    if "Targets" in row:
        attr.targets = tuple(str(t) for t in row.get("Targets") or ())
    if "Format" in row or "DateTimeBehavior" in row:
        behaviour = (row.get("DateTimeBehavior") or {}).get("Value")
        attr.date_only = row.get("Format") == "DateOnly" or behaviour == "DateOnly"
