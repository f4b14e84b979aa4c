"""``$select``, ``$filter`` and ``$expand`` over metadata rows (plain dicts), free of I/O.

Metadata is queried with the same OData options as records (``webapi/query-metadata-
web-api.md``) but its rows are nested objects: a filter may walk a path
(``CanChangeTrackingBeEnabled/Value``), an enum compares as its member name
(``AttributeType eq Microsoft.Dynamics.CRM.AttributeTypeCode'Picklist'``), and
navigation properties (``Attributes``, ``OptionSet``...) appear only when expanded, each
with its own nested ``$select``/``$filter`` separated by ``;``. An unknown property or
option is Dataverse's 400, never ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crmsync.emulator import faults
from crmsync.emulator.model import ENTITIES
from crmsync.emulator.odata import Predicate, compile_filter

Row = dict[str, Any]
# A navigation property: row -> expanded value (list of rows, or one row / None).
Navigation = Callable[[Row], Any]
_OPTIONS = {"$select", "$filter", "$expand"}
_ANY_ENTITY = next(iter(ENTITIES.values()))  # the filter parser wants one; unused by resolve


@dataclass
class Options:
    select: list[str] | None = None
    where: Predicate | None = None
    expand: dict[str, Options] = field(default_factory=dict)


def split_top(text: str, sep: str) -> list[str]:
    """Split at ``sep`` outside parentheses and quotes."""
    out, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == sep:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [p.strip() for p in out if p.strip()]


def parse(
    query: dict[str, str], type_name: str, properties: set[str], navigations: dict[str, Any]
) -> Options:
    """Options for rows of ``type_name`` whose plain properties are ``properties`` and
    whose navigation properties are ``navigations`` (name -> (type, props, navs))."""
    for name in query:
        if name not in _OPTIONS:
            raise faults.bad_query(f"The query parameter {name} is not supported")
    opts = Options()
    if query.get("$select"):
        opts.select = [n.strip() for n in query["$select"].split(",") if n.strip()]
        for name in opts.select:
            if name not in properties:
                raise no_property(type_name, name)
    if query.get("$filter"):
        opts.where = compile_filter(query["$filter"], _ANY_ENTITY, _resolver(type_name, properties))
    for item in split_top(query.get("$expand", ""), ","):
        name, _, rest = item.partition("(")
        name = name.strip()
        if name not in navigations:
            raise no_property(type_name, name)
        inner: dict[str, str] = {}
        if rest:
            if not rest.endswith(")"):
                raise faults.bad_query(f"Syntax error in '$expand={query['$expand']}'.")
            for option in split_top(rest[:-1], ";"):
                key, eq, value = option.partition("=")
                if not eq:
                    raise faults.bad_query(f"Syntax error in '$expand={query['$expand']}'.")
                inner[key.strip()] = value.strip()
        sub_type, sub_props, sub_navs = navigations[name]
        opts.expand[name] = parse(inner, sub_type, sub_props, sub_navs)
    return opts


def apply(rows: list[Row], opts: Options, expanders: dict[str, Navigation]) -> list[Row]:
    """Filter, expand and project rows; ``expanders`` computes each navigation."""
    out = []
    for row in rows:
        if opts.where is not None and not opts.where(row):
            continue
        out.append(shape(row, opts, expanders))
    return out


def shape(row: Row, opts: Options, expanders: dict[str, Navigation]) -> Row:
    if opts.select is None:
        shaped = dict(row)
    else:
        # The key (MetadataId) and the type annotation always come back.
        keep = {"MetadataId", "@odata.type", *opts.select}
        shaped = {k: v for k, v in row.items() if k in keep}
    for name, inner in opts.expand.items():
        value = expanders[name](row)
        if isinstance(value, list):
            shaped[name] = apply(value, inner, expanders)
        else:
            shaped[name] = None if value is None else shape(value, inner, expanders)
    return shaped


def _resolver(type_name: str, properties: set[str]) -> Callable[[str], Callable[[Row], Any]]:
    def resolve(path: str) -> Callable[[Row], Any]:
        parts = path.split("/")
        if parts[0] not in properties:
            raise no_property(type_name, parts[0])

        def get(row: Row) -> Any:
            value: Any = row
            for part in parts:
                value = value.get(part) if isinstance(value, dict) else None
            return value

        return get

    return resolve


def no_property(type_name: str, name: str) -> faults.DataverseFault:
    # Same wording as for records (web-api-client-errors.md), on the metadata type.
    return faults.DataverseFault(
        400,
        "0x0",
        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{type_name}'.",
    )
