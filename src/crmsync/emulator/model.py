"""Entity metadata: the tables crmsync maps, with Dataverse's types and maximum lengths.

Lengths are those of the standard tables (Lead, Contact, Account, Opportunity,
SystemUser table reference pages). ``new_synctomkto`` is Marketo's sync-filter Two
Options column (reference section 9). ``sample_outdooractivities`` is the choices
(multi-select) column of Microsoft's own example (multi-select-picklist.md), added to
contacts as there: written and read as a string of comma-separated option values.
Lookups are stored the way the Web API returns
them, as ``_<attribute>_value``, and written through ``<navigation>@odata.bind``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from crmsync.domain import GUID_RE
from crmsync.emulator import faults
from crmsync.numerals import whole

STRING = "String"
MEMO = "Memo"
GUID = "Uniqueidentifier"
BOOLEAN = "Boolean"
PICKLIST = "Picklist"
DATETIME = "DateTime"
BIGINT = "BigInt"
LOOKUP = "Lookup"
INTEGER = "Integer"
DECIMAL = "Decimal"
MONEY = "Money"
NUMBERS = (INTEGER, DECIMAL, MONEY, BIGINT, PICKLIST)
MULTISELECT = "MultiSelectPicklist"
MAX_SELECTED = 150  # "only 150 options can be selected for a single column"


@dataclass(frozen=True)
class Attribute:
    name: str
    type: str
    max_length: int | None = None
    options: tuple[tuple[int, str], ...] = ()
    target: str | None = None  # entity set a lookup points to
    navigation: str | None = None  # name used with @odata.bind
    writable: bool = True
    # Integer, Decimal, Money: the range and (decimal places) precision; DateTime: True
    # for a date-only column (Format and DateTimeBehavior DateOnly).
    min_value: int | None = None
    max_value: int | None = None
    precision: int | None = None
    date_only: bool = False


@dataclass(frozen=True)
class Entity:
    logical: str
    schema: str
    entity_set: str
    primary_id: str
    primary_name: str
    otc: int  # object type code, quoted in privilege errors
    attributes: dict[str, Attribute] = field(default_factory=dict)

    @property
    def navigations(self) -> dict[str, Attribute]:
        return {a.navigation: a for a in self.attributes.values() if a.navigation}


def system_attributes() -> list[Attribute]:
    """Columns every table has, which the system writes."""
    return [
        Attribute("createdon", DATETIME, writable=False),
        Attribute("modifiedon", DATETIME, writable=False),
        Attribute("_createdby_value", LOOKUP, target="systemusers", writable=False),
        Attribute("_modifiedby_value", LOOKUP, target="systemusers", writable=False),
        Attribute("versionnumber", BIGINT, writable=False),
    ]


def _entity(
    logical: str, schema: str, entity_set: str, name: str, otc: int, attrs: list[Attribute]
) -> Entity:
    pk = Attribute(f"{logical}id", GUID)
    every = [pk, *attrs, *system_attributes()]
    return Entity(logical, schema, entity_set, pk.name, name, otc, {a.name: a for a in every})


_SYNC = Attribute("new_synctomkto", BOOLEAN)
# asyncoperation choices (AsyncOperation table reference): 13 is Bulk Delete.
_OPERATION_TYPES = ((13, "Bulk Delete"),)
_JOB_STATES = ((0, "Ready"), (1, "Suspended"), (2, "Locked"), (3, "Completed"))
_JOB_STATUSES = (
    (0, "Waiting For Resources"), (10, "Waiting"), (20, "In Progress"), (30, "Succeeded"),
    (31, "Failed"), (32, "Canceled"),
)  # fmt: skip
_LEAD_QUALITY = ((1, "Hot"), (2, "Warm"), (3, "Cold"))
_OUTDOOR = (
    (1, "Swimming"), (2, "Hiking"), (3, "Mountain Climbing"), (4, "Fishing"), (5, "Hunting"),
    (6, "Running"), (7, "Boating"), (8, "Skiing"), (9, "Camping"),
)  # fmt: skip

ENTITIES: dict[str, Entity] = {
    e.entity_set: e
    for e in (
        _entity(
            "lead",
            "Lead",
            "leads",
            "fullname",
            4,
            [
                Attribute("emailaddress1", STRING, 100),
                Attribute("firstname", STRING, 50),
                Attribute("lastname", STRING, 50),
                Attribute("fullname", STRING, 160, writable=False),
                Attribute("companyname", STRING, 100),
                Attribute("subject", STRING, 300),
                Attribute("leadqualitycode", PICKLIST, options=_LEAD_QUALITY),
                _SYNC,
            ],
        ),
        _entity(
            "contact",
            "Contact",
            "contacts",
            "fullname",
            2,
            [
                Attribute("emailaddress1", STRING, 100),
                Attribute("firstname", STRING, 50),
                Attribute("lastname", STRING, 50),
                Attribute("fullname", STRING, 160, writable=False),
                Attribute(
                    "_parentcustomerid_value",
                    LOOKUP,
                    target="accounts",
                    navigation="parentcustomerid_account",
                ),
                Attribute("sample_outdooractivities", MULTISELECT, options=_OUTDOOR),
                _SYNC,
            ],
        ),
        _entity(
            "account",
            "Account",
            "accounts",
            "name",
            1,
            [
                Attribute("name", STRING, 160),
                Attribute("accountnumber", STRING, 20),
                Attribute("telephone1", STRING, 50),
            ],
        ),
        _entity(
            "opportunity",
            "Opportunity",
            "opportunities",
            "name",
            3,
            [
                Attribute("name", STRING, 300),
                Attribute(
                    "_parentaccountid_value",
                    LOOKUP,
                    target="accounts",
                    navigation="parentaccountid",
                ),
            ],
        ),
        _entity(
            "asyncoperation",
            "AsyncOperation",
            "asyncoperations",
            "name",
            4700,
            [
                # System jobs (BulkDelete's JobId): the system writes every column.
                Attribute("name", STRING, 256, writable=False),
                Attribute("operationtype", PICKLIST, options=_OPERATION_TYPES, writable=False),
                Attribute("statecode", PICKLIST, options=_JOB_STATES, writable=False),
                Attribute("statuscode", PICKLIST, options=_JOB_STATUSES, writable=False),
                Attribute("message", MEMO, writable=False),
                Attribute("completedon", DATETIME, writable=False),
            ],
        ),
        _entity(
            "systemuser",
            "SystemUser",
            "systemusers",
            "fullname",
            8,
            [
                Attribute("fullname", STRING, 200),
                Attribute("applicationid", GUID),
                Attribute("internalemailaddress", STRING, 100),
            ],
        ),
    )
}
BY_LOGICAL: dict[str, Entity] = {e.logical: e for e in ENTITIES.values()}


def is_guid(text: str) -> bool:
    return bool(GUID_RE.fullmatch(text))


def normalize_guid(text: str) -> str:
    return str(uuid.UUID(text))


def validate_value(entity: Entity, attr: Attribute, value: Any) -> Any:
    """Check one body value against its column; return the value to store."""
    if value is None:
        return None
    kind = attr.type
    if kind in (STRING, MEMO):
        if not isinstance(value, str):
            raise faults.bad_payload(
                entity.entity_set,
                f"Cannot convert the literal '{value}' to the expected type 'Edm.String'.",
            )
        if attr.max_length is not None and len(value) > attr.max_length:
            raise faults.too_long(entity.logical, attr.name, attr.max_length)
        return value
    if kind == BOOLEAN:
        if not isinstance(value, bool):
            raise faults.bad_payload(
                entity.entity_set,
                f"Cannot convert the literal '{value}' to the expected type 'Edm.Boolean'.",
            )
        return value
    if kind == PICKLIST:
        if isinstance(value, bool) or not isinstance(value, int):
            raise faults.bad_payload(
                entity.entity_set,
                f"Cannot convert the literal '{value}' to the expected type 'Edm.Int32'.",
            )
        accepted = [v for v, _ in attr.options]
        # A mapped choice declared without its options takes any option value.
        if accepted and value not in accepted:
            raise faults.invalid_choice(entity.logical, attr.name, value, accepted)
        return value
    if kind == INTEGER:
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
            raise faults.bad_payload(
                entity.entity_set,
                f"Cannot convert the literal '{value}' to the expected type 'Edm.Int32'.",
            )
        _in_range(entity, attr, value)
        return value
    if kind in (DECIMAL, MONEY):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise faults.bad_payload(
                entity.entity_set,
                f"Cannot convert the literal '{value}' to the expected type 'Edm.Decimal'.",
            )
        exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        _in_range(entity, attr, exact)
        # Dataverse rounds a value to the column's precision.
        rounded = exact.quantize(Decimal(1).scaleb(-(attr.precision or 0)), ROUND_HALF_EVEN)
        return int(rounded) if rounded == rounded.to_integral_value() else float(rounded)
    if kind == DATETIME:
        edm = "Edm.Date" if attr.date_only else "Edm.DateTimeOffset"
        parsed = _moment(value, attr.date_only)
        if parsed is None:
            raise faults.bad_payload(
                entity.entity_set,
                f"Cannot convert the literal '{value}' to the expected type '{edm}'.",
            )
        return parsed
    if kind == MULTISELECT:
        return _choices(entity, attr, value)
    if kind == GUID:
        if not isinstance(value, str) or not is_guid(value):
            raise faults.bad_payload(
                entity.entity_set,
                f"Cannot convert the literal '{value}' to the expected type 'Edm.Guid'.",
            )
        return normalize_guid(value)
    raise faults.invalid_body_property(entity.logical, attr.name)


def _in_range(entity: Entity, attr: Attribute, value: int | Decimal) -> None:
    low, high = attr.min_value, attr.max_value
    if (low is not None and value < low) or (high is not None and value > high):
        raise faults.out_of_range(entity.logical, attr.name, value, low, high)


def _moment(value: Any, date_only: bool) -> str | None:
    """A date (``2026-01-02``) or a UTC instant (``2026-01-02T03:04:05Z``) as Dataverse
    returns it, or None if ``value`` is neither."""
    if not isinstance(value, str):
        return None
    try:
        if date_only and len(value) == 10:
            return date.fromisoformat(value).isoformat()
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if date_only:
            return moment.date().isoformat()
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # Dataverse reads a time without offset as UTC
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def choice_values(text: str) -> list[int] | None:
    """``"1, 9"`` -> [1, 9]; None unless every comma-separated item is a whole number."""
    values = [whole(item.strip(), signed=True) for item in text.split(",")]
    return None if None in values else [v for v in values if v is not None]


def selected(value: Any) -> set[int]:
    """The options a stored choices value holds ("2,4,9"); none for null."""
    if not isinstance(value, str):
        return set()
    return set(choice_values(value) or [])


def _choices(entity: Entity, attr: Attribute, value: Any) -> str | None:
    # The Web API takes "a string containing comma separated number values" ("1, 9")
    # and answers them comma-separated without spaces ("2,3,8,9") (multi-select-
    # picklist.md). Inferred: ascending and without repeats; "" clears the column.
    if not isinstance(value, str):
        raise faults.bad_payload(
            entity.entity_set,
            f"Cannot convert the literal '{value}' to the expected type 'Edm.String'.",
        )
    if not value.strip():
        return None
    values = choice_values(value)
    if values is None:
        raise faults.bad_payload(
            entity.entity_set,
            f"Cannot convert the literal '{value}' to a collection of option values.",
        )
    accepted = [v for v, _ in attr.options]
    for v in values:
        if v not in accepted:
            raise faults.invalid_choice(entity.logical, attr.name, v, accepted)
    chosen = sorted(set(values))
    if len(chosen) > MAX_SELECTED:
        raise faults.bad_payload(
            entity.entity_set,
            f"At most {MAX_SELECTED} options can be selected for '{attr.name}'.",
        )  # (inferred) wording
    return ",".join(str(v) for v in chosen)


def computed(entity: Entity, row: dict[str, Any]) -> None:
    """Fill columns Dataverse derives from others (``fullname`` of leads and contacts)."""
    if entity.logical in ("lead", "contact"):
        parts = [row.get("firstname"), row.get("lastname")]
        row["fullname"] = " ".join(p for p in parts if p) or None
