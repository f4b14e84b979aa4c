"""The mapping's file format, as data: what a ``[objects.<name>]`` table may hold.

These models are the schema of the default mapping (``default.toml``) and of the
``objects`` tables of a ``CRMSYNC_CONFIG`` file alike; ``docs/mapping.md``'s reference
is generated from them. They check each entry on its own (types, ranges, names); what
needs the whole mapping (a lookup's target, one attribute per column, the label) is
checked by ``crmsync.mapping.build``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, Field, PrivateAttr, StringConstraints

from crmsync.domain import ConflictRule, FieldType, Flow

# A local table or column: a plain SQL identifier, safe unquoted on SQLite and PostgreSQL
# (PostgreSQL truncates identifiers at 63 bytes).
SQL_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Words SQLite or PostgreSQL reserve: crmsync writes local names unquoted, so a table or
# column may not be one of them (SQL:2016's and both databases' lists, the common core).
RESERVED_WORDS = frozenset(
    """abort action add all alter analyse analyze and any array as asc asymmetric between
    both by case cast check collate column commit constraint create cross current_date
    current_role current_time current_timestamp current_user default deferrable delete
    desc distinct do drop else end except exists false fetch for foreign from full grant
    group having if in index initially inner insert intersect into is isnull join key
    lateral leading left like limit localtime localtimestamp natural not notnull null
    offset on only or order outer overlaps placing primary references returning right
    rollback row select session_user set similar some symmetric table then to trailing
    transaction trigger true union unique update user using values variadic verbose view
    when where window with""".split()  # noqa: SIM905 (a word list reads better as text)
)
# A Dataverse logical name (always lower case) or entity set name.
LOGICAL_NAME = re.compile(r"[a-z_][a-z0-9_]{0,99}")
# A navigation property keeps its schema name's case (new_ContactId).
NAVIGATION = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")

# Dataverse's limits (column data types, "Text" and "Number" columns): a single line of
# text holds up to 4,000 characters, multiple lines up to 1,048,576; a whole number is an
# Int32; a decimal has at most 10 decimal places and lies within ±100,000,000,000; a
# currency has at most 4 and lies within ±922,337,203,685,477.
MAX_STRING = 4000
MAX_MEMO = 1_048_576
INT32 = (-2_147_483_648, 2_147_483_647)
DECIMAL_RANGE = (-100_000_000_000, 100_000_000_000)
MONEY_RANGE = (-922_337_203_685_477, 922_337_203_685_477)
MAX_PLACES = {FieldType.DECIMAL: 10, FieldType.MONEY: 4}
DEFAULT_PLACES = 2

Choice = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class FieldEntry(BaseModel):
    """One field: ``column = { attribute = "...", type = "..." }``."""

    model_config = {"extra": "forbid"}

    attribute: str | None = Field(
        None,
        description="The Dataverse attribute's logical name (for a lookup, the lookup "
        "attribute, e.g. parentcustomerid)",
    )
    type: FieldType | None = Field(
        None,
        description="string, memo, integer, decimal, money, boolean, datetime, date, "
        "choice or lookup; required for a new field",
    )
    max_length: int | None = Field(
        None,
        ge=1,
        description=f"string: the most characters Dynamics accepts (≤ {MAX_STRING}); "
        f"memo: ≤ {MAX_MEMO:,}",
    )
    precision: int | None = Field(
        None, ge=0, description="decimal (≤ 10) and money (≤ 4): decimal places; default 2"
    )
    minimum: int | None = Field(None, description="integer, decimal, money: the smallest value")
    maximum: int | None = Field(None, description="integer, decimal, money: the largest value")
    choices: dict[Choice, int] | None = Field(
        None,
        description="choice: local value → Dynamics option value; without it the local "
        "column holds the option value, or with labels = true the option's label",
    )
    labels: bool | None = Field(
        None,
        description="choice without choices: true keeps the option's label locally (text), "
        "read from Dynamics' metadata; false (default) keeps the option value (an integer)",
    )
    target: str | None = Field(None, description="lookup: the mapped object it points to")
    navigation: str | None = Field(
        None,
        description="lookup: the navigation property used with @odata.bind (default: the "
        "attribute; custom lookups use their schema name, e.g. new_ContactId)",
    )
    flow: Flow | None = Field(None, description="this field's direction (default: the object's)")
    conflict_rule: ConflictRule | None = Field(
        None, description="this field's conflict rule (default: the object's)"
    )


class ObjectEntry(BaseModel):
    """One object: ``[objects.<name>]``."""

    model_config = {"extra": "forbid"}

    entity_set: str | None = Field(
        None, description="The Dataverse entity set (required for a new object)"
    )
    logical_name: str | None = Field(
        None, description="The table's logical name (required for a new object)"
    )
    primary_key: str | None = Field(
        None, description="The primary key attribute (required for a new object)"
    )
    label: str | None = Field(
        None, description="The local column a person recognises the record by (a mapped field)"
    )
    flow: Flow | None = Field(None, description="both, to_crm or from_crm (default: both)")
    conflict_rule: ConflictRule | None = Field(
        None, description="local_wins, crm_wins or newest_wins (default: local_wins)"
    )
    sync_filter_field: str | None = Field(
        None,
        description="A Dynamics Yes/No attribute of this table: a record set to an explicit "
        "No is left out of the sync (default: the sync_filter_field setting, for the tables "
        'that have it); "" syncs this object unfiltered',
    )
    table: str | None = Field(
        None,
        description="An application's existing table to attach (an object that is not "
        "standard only); without it crmsync creates a table named after the object. "
        "crmsync adds only crm_id_column and its capture triggers to an attached table",
    )
    id_column: str | None = Field(
        None,
        description="An attached table's integer primary key column, generated by the "
        'database (default "id"); only with table',
    )
    crm_id_column: str | None = Field(
        None,
        description="The column of an attached table holding the Dynamics id; crmsync adds "
        'it (with a unique index) if it is missing (default "crm_id"); only with table',
    )
    fields: dict[str, str | FieldEntry] | None = Field(
        None,
        description="local column → field; a plain string is the v1 form (the attribute of a "
        "text column), and an object whose fields are all v1 strings replaces the default map",
    )
    field_rules: dict[str, ConflictRule] = Field(
        default_factory=dict, description="per-column conflict rule (v1 form of conflict_rule)"
    )
    field_flows: dict[str, Flow] = Field(
        default_factory=dict, description="per-column direction (v1 form of flow)"
    )
    # Fields whose entries did not parse (their problems are listed): not a setting.
    _broken: set[str] = PrivateAttr(default_factory=set)
