"""Build the object registry from mapping data: the default mapping with a user's laid over.

``build(overrides)`` returns every object's ``ObjectSpec`` or raises ``MappingError``
listing every problem at once by its TOML path (``objects.x.fields.y.type``). A user's
entry for a standard object changes only what it names: a field given as a table is
merged over the default field of that column, or added; the v1 form (every field a
plain attribute string naming a standard column) replaces the default map, as in v1.
An object that is not standard may attach an application's existing table (``table``,
with its ``id_column`` and ``crm_id_column``). Nothing here touches a store: whether an
attached table is there, and whether a column's type matches, is checked by
``crmsync db upgrade``.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from pydantic import TypeAdapter, ValidationError

from crmsync.domain import ConflictRule, FieldSpec, FieldType, Flow, Lookup, ObjectSpec
from crmsync.mapping.model import (
    DECIMAL_RANGE,
    DEFAULT_PLACES,
    INT32,
    LOGICAL_NAME,
    MAX_MEMO,
    MAX_PLACES,
    MAX_STRING,
    MONEY_RANGE,
    NAVIGATION,
    RESERVED_WORDS,
    SQL_NAME,
    FieldEntry,
    ObjectEntry,
)

# Columns crmsync keeps in every table it creates, and prefixes of its own tables.
RESERVED_COLUMNS = frozenset({"id", "crm_id", "created_at", "updated_at", "crm_deleted_at"})
RESERVED_TABLE_PREFIXES = ("sync_", "console_", "dynamics_", "alembic_")
# Attributes crmsync reads itself on every pull; a field may not claim them.
RESERVED_ATTRIBUTES = frozenset({"modifiedon", "_modifiedby_value", "versionnumber"})

_ENTRY = TypeAdapter(ObjectEntry)
_FIELD: TypeAdapter[str | FieldEntry] = TypeAdapter(str | FieldEntry)


class MappingError(ValueError):
    """A mapping that cannot be used; ``problems`` are ``(toml path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{path}: {message}" for path, message in problems))


@functools.cache
def _default_data() -> dict[str, Any]:
    text = resources.files("crmsync.mapping").joinpath("default.toml").read_text("utf-8")
    objects: dict[str, Any] = tomllib.loads(text)["objects"]
    return objects


def default_objects() -> dict[str, ObjectSpec]:
    """The default mapping: the contract's four objects (built once; the specs are
    frozen, the dict is the caller's)."""
    return dict(_default_specs())


@functools.cache
def _default_specs() -> dict[str, ObjectSpec]:
    return build({})


def build(overrides: Mapping[str, Any]) -> dict[str, ObjectSpec]:
    """Every object of the default mapping with ``overrides`` (``objects`` tables) applied."""
    problems: list[tuple[str, str]] = []
    entries = {name: _parse(name, data, problems) for name, data in _default_data().items()}
    if problems:  # the shipped file is wrong: a bug, not a user's mistake
        raise MappingError(problems)
    standard = set(entries)
    for name, data in overrides.items():
        path = f"objects.{name}"
        if name not in standard and not SQL_NAME.fullmatch(str(name)):
            problems.append(
                (path, "an object's name must be a lower-case SQL name ([a-z_][a-z0-9_]*)")
            )
            continue
        given = _parse(name, data, problems)
        if given is None:
            continue
        base = entries.get(name)
        entries[name] = _merge(name, base, given, problems) if base is not None else given
    specs: dict[str, ObjectSpec] = {}
    for name, entry in entries.items():
        if entry is None:
            continue
        spec = _spec(name, entry, name in standard, problems)
        if spec is not None:
            specs[name] = spec
    _check_across(entries, problems)
    if problems:
        raise MappingError(problems)
    return specs


def _parse(name: str, data: Any, problems: list[tuple[str, str]]) -> ObjectEntry | None:
    """The entry, with each field checked on its own so that every problem is listed; a
    field that does not parse is left out (its problems are listed)."""
    path = f"objects.{name}"
    if not isinstance(data, Mapping):
        problems.append((path, "must be a table"))
        return None
    fields = data.get("fields")
    entry: ObjectEntry | None = _validate(
        _ENTRY, {k: v for k, v in data.items() if k != "fields"}, path, problems
    )
    if fields is None:
        return entry
    if not isinstance(fields, Mapping):
        problems.append((f"{path}.fields", "must be a table of fields"))
        return None
    parsed = {
        column: f
        for column, raw in fields.items()
        if (f := _validate(_FIELD, raw, f"{path}.fields.{column}", problems)) is not None
    }
    if entry is None:
        return None
    # Fields that did not parse are left out; their problems are listed already, and
    # build() refuses the mapping, so the rest only adds its own problems to the list.
    entry = entry.model_copy(update={"fields": parsed})
    entry._broken = set(fields) - set(parsed)
    return entry


def _validate(
    adapter: TypeAdapter[Any], data: Any, path: str, problems: list[tuple[str, str]]
) -> Any:
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        for err in exc.errors():
            # A table given for ``str | FieldEntry`` failed as a FieldEntry; that it is
            # not a string too is noise.
            if isinstance(data, Mapping) and err["loc"][:1] == ("str",):
                continue
            loc = ".".join(str(part) for part in err["loc"] if not _is_union_branch(part))
            problems.append((f"{path}{'.' + loc if loc else ''}", err["msg"]))
        return None


def _is_union_branch(part: Any) -> bool:
    # pydantic names the member of ``str | FieldEntry`` it tried; the path hides it.
    return part in ("str", "FieldEntry")


def _merge(
    name: str, base: ObjectEntry, given: ObjectEntry, problems: list[tuple[str, str]]
) -> ObjectEntry:
    for key in ("entity_set", "logical_name", "primary_key", "table"):
        if getattr(given, key) is not None and getattr(given, key) != getattr(base, key):
            problems.append(
                (f"objects.{name}.{key}", f"the standard object {name} keeps its {key}")
            )
    for key in ("id_column", "crm_id_column"):
        if getattr(given, key) is not None:
            problems.append(
                (
                    f"objects.{name}.{key}",
                    f"the standard object {name} keeps its own table; "
                    f"{key} is a setting of an attached table",
                )
            )
    fields = dict(base.fields or {})
    if given.fields is not None:
        if all(isinstance(v, str) for v in given.fields.values()) and set(given.fields) <= set(
            fields
        ):
            # The v1 form: these columns and no others, each to the attribute named.
            fields = {c: _with(fields[c], attribute=a) for c, a in given.fields.items()}
        else:
            for column, value in given.fields.items():
                if column not in fields:
                    fields[column] = value
                elif isinstance(value, str):
                    fields[column] = _with(fields[column], attribute=value)
                else:
                    fields[column] = _with(fields[column], **value.model_dump(exclude_unset=True))
    merged = ObjectEntry(
        entity_set=base.entity_set,
        logical_name=base.logical_name,
        primary_key=base.primary_key,
        label=given.label or base.label,
        flow=given.flow or base.flow,
        conflict_rule=given.conflict_rule or base.conflict_rule,
        sync_filter_field=(
            given.sync_filter_field
            if given.sync_filter_field is not None
            else base.sync_filter_field
        ),
        table=base.table,
        id_column=None,
        crm_id_column=None,
        fields=fields,
        field_rules={**base.field_rules, **given.field_rules},
        field_flows={**base.field_flows, **given.field_flows},
    )
    merged._broken = given._broken
    return merged


def _with(entry: str | FieldEntry, **changes: Any) -> FieldEntry:
    if isinstance(entry, str):
        entry = FieldEntry.model_validate({"attribute": entry, "type": FieldType.STRING})
    return entry.model_copy(update=changes)


def _spec(
    name: str,
    entry: ObjectEntry,
    standard: bool,
    problems: list[tuple[str, str]],
) -> ObjectSpec | None:
    path = f"objects.{name}"
    before = len(problems)
    broken = entry._broken
    for key in ("entity_set", "logical_name", "primary_key", "label"):
        if getattr(entry, key) is None:
            problems.append((f"{path}.{key}", "required for an object that is not standard"))
    for key in ("entity_set", "logical_name", "primary_key"):
        value = getattr(entry, key)
        if value is not None and not LOGICAL_NAME.fullmatch(value):
            problems.append((f"{path}.{key}", f"{value!r} is not a Dataverse logical name"))
    table = entry.table or name
    if not SQL_NAME.fullmatch(table):
        problems.append((f"{path}.table", f"{table!r} is not a lower-case SQL name"))
    elif table in RESERVED_WORDS:
        problems.append(
            (f"{path}.table", f"{table!r} is a word SQL reserves; name the object otherwise")
        )
    elif table.startswith(RESERVED_TABLE_PREFIXES):
        problems.append(
            (
                f"{path}.table",
                f"{table!r}: names starting sync_, console_, "
                "dynamics_ or alembic_ are crmsync's own tables",
            )
        )
    attached = entry.table is not None and not standard
    own = {"id": entry.id_column or "id", "crm_id": entry.crm_id_column or "crm_id"}
    for key in ("id_column", "crm_id_column"):
        value = getattr(entry, key)
        if value is None:
            continue
        if not attached:
            problems.append((f"{path}.{key}", "a setting of an attached table: only with table"))
        elif not SQL_NAME.fullmatch(value):
            problems.append((f"{path}.{key}", f"{value!r} is not a lower-case SQL column name"))
    if own["id"] == own["crm_id"]:
        problems.append((f"{path}.crm_id_column", "must differ from id_column"))
    if not entry.fields and not broken:
        problems.append((f"{path}.fields", "an object needs at least one field"))
    fields = [
        f
        for column, value in (entry.fields or {}).items()
        if (f := _field(f"{path}.fields.{column}", column, value, problems)) is not None
    ]
    by_column = {f.column: f for f in fields}
    for key, column in (("id_column", own["id"]), ("crm_id_column", own["crm_id"])):
        if attached and column in by_column:
            problems.append(
                (f"{path}.fields.{column}", f"{column!r} is the table's {key}, kept by crmsync")
            )
    seen: dict[str, str] = {}
    for f in fields:
        if f.attribute in seen:
            problems.append(
                (
                    f"{path}.fields.{f.column}.attribute",
                    f"{f.attribute!r} is already mapped to {seen[f.attribute]}",
                )
            )
        seen.setdefault(f.attribute, f.column)
    if entry.label is not None and entry.label not in broken:
        label = by_column.get(entry.label)
        if label is None:
            problems.append((f"{path}.label", f"{entry.label!r} is not a field of {name}"))
        elif label.type is FieldType.LOOKUP:
            problems.append((f"{path}.label", "a lookup cannot be the label"))
    _check_filter(path, entry.sync_filter_field, fields, problems)
    for key, table_ in (("field_rules", entry.field_rules), ("field_flows", entry.field_flows)):
        for column in table_:
            if column not in by_column and column not in broken:
                problems.append((f"{path}.{key}.{column}", f"{column!r} is not a field of {name}"))
    if len(problems) > before:
        return None
    rules = {c: r for c, r in entry.field_rules.items()}
    flows = {c: fl for c, fl in entry.field_flows.items()}
    for f in fields:
        if f.conflict_rule is not None:
            rules[f.column] = f.conflict_rule
        if f.flow is not None:
            flows[f.column] = f.flow
    lookups = tuple(
        Lookup(f.column, f.target, f.navigation or f.attribute, f"_{f.attribute}_value")
        for f in fields
        if f.type is FieldType.LOOKUP and f.target is not None
    )
    assert entry.entity_set and entry.logical_name and entry.primary_key and entry.label
    return ObjectSpec(
        name=name,
        table=table,
        entity_set=entry.entity_set,
        logical_name=entry.logical_name,
        primary_key=entry.primary_key,
        label_column=entry.label,
        fields={f.column: f.attribute for f in fields if f.type is not FieldType.LOOKUP},
        lookups=lookups,
        flow=entry.flow or Flow.BOTH,
        conflict_rule=entry.conflict_rule or ConflictRule.LOCAL_WINS,
        field_rules=rules,
        field_flows=flows,
        field_specs={f.column: f for f in fields},
        sync_filter_field=entry.sync_filter_field,
        standard=standard,
        attached=attached,
        id_column=own["id"],
        crm_id_column=own["crm_id"],
    )


def _check_filter(
    path: str, name: str | None, fields: Sequence[FieldSpec], problems: list[tuple[str, str]]
) -> None:
    """An object's own sync filter names a Dataverse attribute; if the mapping also syncs
    that attribute as a field, the field must be a boolean (a Yes/No column)."""
    if not name:
        return
    where = f"{path}.sync_filter_field"
    if not LOGICAL_NAME.fullmatch(name):
        problems.append((where, f"{name!r} is not a Dataverse logical name"))
        return
    for f in fields:
        if f.attribute == name and f.type is not FieldType.BOOLEAN:
            problems.append(
                (where, f"{name!r} is mapped as {f.column} ({f.type}), not a Yes/No field")
            )


def _field(
    path: str, column: str, value: str | FieldEntry, problems: list[tuple[str, str]]
) -> FieldSpec | None:
    entry = _with(value) if isinstance(value, str) else value
    before = len(problems)
    if not SQL_NAME.fullmatch(column):
        problems.append((path, f"{column!r} is not a lower-case SQL column name"))
    elif column in RESERVED_COLUMNS:
        problems.append((path, f"{column!r} is a column crmsync keeps itself"))
    elif column in RESERVED_WORDS:
        problems.append((path, f"{column!r} is a word SQL reserves; name the column otherwise"))
    kind = entry.type
    if kind is None:
        problems.append((f"{path}.type", "required for a new field"))
        return None
    if entry.attribute is None:
        problems.append((f"{path}.attribute", "required"))
    elif not LOGICAL_NAME.fullmatch(entry.attribute):
        problems.append(
            (f"{path}.attribute", f"{entry.attribute!r} is not a Dataverse logical name")
        )
    elif entry.attribute in RESERVED_ATTRIBUTES:
        problems.append((f"{path}.attribute", f"{entry.attribute!r} is read by crmsync itself"))

    def only_for(key: str, *kinds: FieldType) -> None:
        if getattr(entry, key) is not None and kind not in kinds:
            problems.append((f"{path}.{key}", f"not a setting of a {kind} field"))

    only_for("max_length", FieldType.STRING, FieldType.MEMO)
    only_for("precision", FieldType.DECIMAL, FieldType.MONEY)
    only_for("minimum", FieldType.INTEGER, FieldType.DECIMAL, FieldType.MONEY)
    only_for("maximum", FieldType.INTEGER, FieldType.DECIMAL, FieldType.MONEY)
    only_for("choices", FieldType.CHOICE)
    only_for("labels", FieldType.CHOICE)
    only_for("target", FieldType.LOOKUP)
    only_for("navigation", FieldType.LOOKUP)
    max_length = entry.max_length
    if kind is FieldType.STRING:
        max_length = max_length or 100  # Dataverse's default for a single line of text
        if max_length > MAX_STRING:
            problems.append((f"{path}.max_length", f"Dataverse allows at most {MAX_STRING}"))
    if kind is FieldType.MEMO:
        max_length = max_length or 2000  # Dataverse's default for multiple lines of text
        if max_length > MAX_MEMO:
            problems.append((f"{path}.max_length", f"Dataverse allows at most {MAX_MEMO:,}"))
    precision = entry.precision
    if kind in MAX_PLACES:
        precision = DEFAULT_PLACES if precision is None else precision
        if precision > MAX_PLACES[kind]:
            problems.append(
                (f"{path}.precision", f"a {kind} has at most {MAX_PLACES[kind]} decimal places")
            )
    low, high = {
        FieldType.INTEGER: INT32,
        FieldType.DECIMAL: DECIMAL_RANGE,
        FieldType.MONEY: MONEY_RANGE,
    }.get(kind, (None, None))
    minimum, maximum = entry.minimum, entry.maximum
    if low is not None and high is not None:
        for key, bound in (("minimum", minimum), ("maximum", maximum)):
            if bound is not None and not low <= bound <= high:
                problems.append((f"{path}.{key}", f"outside a {kind}'s range {low:,}..{high:,}"))
        minimum = low if minimum is None else minimum
        maximum = high if maximum is None else maximum
        if minimum > maximum:
            problems.append((f"{path}.minimum", "greater than maximum"))
    choices = tuple((entry.choices or {}).items())
    if kind is FieldType.CHOICE and len({v for _, v in choices}) < len(choices):
        problems.append((f"{path}.choices", "two local values map to one option value"))
    if kind is FieldType.CHOICE and choices and entry.labels is False:
        problems.append(
            (
                f"{path}.labels",
                "choices give the local values; labels = false keeps option values, "
                "for a choice without choices",
            )
        )
    if kind is FieldType.LOOKUP:
        if entry.target is None:
            problems.append((f"{path}.target", "required for a lookup: the object it points to"))
        if entry.navigation is not None and not NAVIGATION.fullmatch(entry.navigation):
            problems.append((f"{path}.navigation", f"{entry.navigation!r} is not a property name"))
    if len(problems) > before or entry.attribute is None:
        return None
    return FieldSpec(
        column=column,
        attribute=entry.attribute,
        type=kind,
        max_length=max_length,
        precision=precision,
        minimum=minimum,
        maximum=maximum,
        choices=choices,
        # Text for declared choices and for labels read from Dynamics; otherwise the
        # option value itself, as before ``labels`` existed (an INTEGER column).
        labels=bool(choices) or entry.labels is True,
        flow=entry.flow,
        conflict_rule=entry.conflict_rule,
        target=entry.target,
        navigation=entry.navigation,
    )


def _check_across(
    entries: Mapping[str, ObjectEntry | None], problems: list[tuple[str, str]]
) -> None:
    tables: dict[str, str] = {}
    sets: dict[str, str] = {}
    for name, entry in entries.items():
        if entry is None:
            continue
        table = entry.table or name
        for owner, value, key in ((tables, table, "table"), (sets, entry.entity_set, "entity_set")):
            if value is None:
                continue
            if value in owner:
                problems.append((f"objects.{name}.{key}", f"{value!r} is also {owner[value]}'s"))
            owner.setdefault(value, name)
        for column, field in (entry.fields or {}).items():
            target = field.target if isinstance(field, FieldEntry) else None
            if target is not None and target not in entries:
                problems.append(
                    (f"objects.{name}.fields.{column}.target", f"{target!r} is not a mapped object")
                )
