"""The sync's vocabulary and the object registry. No I/O here.

An *object* is one kind of record (lead, contact, account, opportunity) kept in a local
table and mapped to a Dataverse entity set. Its *direction* says which way changes flow.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

# A Dataverse primary key: a GUID in its 8-4-4-4-12 hex form.
GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
GUID_RE = re.compile(GUID)


class Direction(enum.StrEnum):
    TO_CRM = "to_crm"
    FROM_CRM = "from_crm"


class Operation(enum.StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


class Flow(enum.StrEnum):
    """Which way an object (or a field) syncs."""

    BOTH = "both"
    TO_CRM = "to_crm"
    FROM_CRM = "from_crm"

    @property
    def pushes(self) -> bool:
        return self in (Flow.BOTH, Flow.TO_CRM)

    @property
    def pulls(self) -> bool:
        return self in (Flow.BOTH, Flow.FROM_CRM)


class ConflictRule(enum.StrEnum):
    """Who wins when both sides changed the same field since the last sync."""

    LOCAL_WINS = "local_wins"
    CRM_WINS = "crm_wins"
    NEWEST_WINS = "newest_wins"


class ErrorStatus(enum.StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    DISMISSED = "dismissed"


class EntryState(enum.StrEnum):
    """A queue entry is either waiting (part of the backlog) or parked as an error."""

    PENDING = "pending"
    PARKED = "parked"


@dataclass(frozen=True)
class Lookup:
    """A local foreign key that maps to a Dataverse lookup.

    ``column`` is the local column (``account_id``); ``target`` the local object it points
    to; ``navigation`` the single-valued navigation property used with ``@odata.bind``
    when writing; ``value_attribute`` the ``_x_value`` attribute Dataverse returns on read.
    """

    column: str
    target: str
    navigation: str
    value_attribute: str


@dataclass(frozen=True)
class ObjectSpec:
    """How one local table maps to one Dataverse entity set."""

    name: str
    table: str
    entity_set: str
    logical_name: str
    primary_key: str
    label_column: str
    fields: dict[str, str]  # local column -> Dataverse attribute
    lookups: tuple[Lookup, ...] = ()
    flow: Flow = Flow.BOTH
    conflict_rule: ConflictRule = ConflictRule.LOCAL_WINS
    field_rules: dict[str, ConflictRule] = field(default_factory=dict)
    field_flows: dict[str, Flow] = field(default_factory=dict)

    @property
    def columns(self) -> tuple[str, ...]:
        """Local data columns a client may write (fields, then lookups)."""
        return (*self.fields, *(lk.column for lk in self.lookups))

    def rule_for(self, column: str) -> ConflictRule:
        if not self.flow.pushes:
            # One-way objects always take Dynamics' value.
            return ConflictRule.CRM_WINS
        return self.field_rules.get(column, self.conflict_rule)

    def flow_for(self, column: str) -> Flow:
        return self.field_flows.get(column, self.flow)


def default_objects() -> dict[str, ObjectSpec]:
    """The contract's default mapping and directions."""
    specs = [
        ObjectSpec(
            name="lead",
            table="lead",
            entity_set="leads",
            logical_name="lead",
            primary_key="leadid",
            label_column="email",
            fields={
                "email": "emailaddress1",
                "first_name": "firstname",
                "last_name": "lastname",
                "company": "companyname",
            },
            flow=Flow.BOTH,
            conflict_rule=ConflictRule.LOCAL_WINS,
        ),
        ObjectSpec(
            name="contact",
            table="contact",
            entity_set="contacts",
            logical_name="contact",
            primary_key="contactid",
            label_column="email",
            fields={"email": "emailaddress1", "first_name": "firstname", "last_name": "lastname"},
            lookups=(
                Lookup(
                    column="account_id",
                    target="account",
                    navigation="parentcustomerid_account",
                    value_attribute="_parentcustomerid_value",
                ),
            ),
            flow=Flow.BOTH,
            conflict_rule=ConflictRule.CRM_WINS,
        ),
        ObjectSpec(
            name="account",
            table="account",
            entity_set="accounts",
            logical_name="account",
            primary_key="accountid",
            label_column="name",
            fields={"name": "name"},
            flow=Flow.FROM_CRM,
            conflict_rule=ConflictRule.CRM_WINS,
        ),
        ObjectSpec(
            name="opportunity",
            table="opportunity",
            entity_set="opportunities",
            logical_name="opportunity",
            primary_key="opportunityid",
            label_column="name",
            fields={"name": "name"},
            lookups=(
                Lookup(
                    column="account_id",
                    target="account",
                    navigation="parentaccountid",
                    value_attribute="_parentaccountid_value",
                ),
            ),
            flow=Flow.FROM_CRM,
            conflict_rule=ConflictRule.CRM_WINS,
        ),
    ]
    return {s.name: s for s in specs}


OBJECT_NAMES: tuple[str, ...] = ("lead", "contact", "account", "opportunity")
