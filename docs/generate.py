"""Regenerate the parts of the docs that come from declarations, or check them.

- ``docs/configuration.md``: the settings table, from ``crmsync.config.Settings``
  (between the ``BEGIN GENERATED``/``END GENERATED`` markers; the rest is hand-written);
- ``docs/mapping.md``: the mapping reference, from the mapping's schema
  (``crmsync.mapping.model``: its keys, their values and Dataverse's limits) and the
  default mapping, between the same kind of markers;
- ``docs/api.md``: the API reference, from the app's OpenAPI document;
- ``docs/troubleshooting.md``: the error categories and their fixes, from
  ``crmsync.diagnosis.FIXES`` (the same texts as the ERROR ``fix``).

    PYTHONPATH=src python docs/generate.py           # rewrite them
    PYTHONPATH=src python docs/generate.py --check   # exit 1 if one is stale

``make docs`` runs the first; ``tests/unit/test_docs.py`` runs the check, so a setting,
a mapping key or a route added without regenerating fails the suite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
BEGIN = "<!-- BEGIN GENERATED: settings (docs/generate.py) -->"
END = "<!-- END GENERATED: settings -->"
MAPPING_BEGIN = "<!-- BEGIN GENERATED: mapping (docs/generate.py) -->"
MAPPING_END = "<!-- END GENERATED: mapping -->"
FIXES_BEGIN = "<!-- BEGIN GENERATED: fixes (docs/generate.py) -->"
FIXES_END = "<!-- END GENERATED: fixes -->"
ENV_PREFIX = "CRMSYNC_"


# -- settings ------------------------------------------------------------------------------


def _type_name(annotation: Any, secret: bool) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = text.replace("typing.", "").replace("pathlib.", "")
    if secret:
        return "secret"
    for plain in ("int", "float", "bool", "str", "Path"):
        if text == plain or text.startswith(f"{plain} |"):
            return {"Path": "file", "str": "text"}.get(plain, plain)
    if "dict" in text:
        return "table"
    return text


def _range(metadata: list[Any]) -> str:
    parts = []
    for m in metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(m, attr, None)
            if value is not None:
                parts.append(f"{sign} {value:g}")
    return ", ".join(parts)


def _default(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    value = field.default
    if value is PydanticUndefined or value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def settings_rows() -> list[dict[str, str]]:
    """One row per declared setting, in declaration order."""
    from pydantic import SecretStr

    from crmsync.config import Settings

    rows = []
    for name, field in Settings.model_fields.items():
        secret = "SecretStr" in str(field.annotation) or field.annotation is SecretStr
        kind = _type_name(field.annotation, secret)
        limits = _range(field.metadata)
        where = f"`{ENV_PREFIX}{name.upper()}`"
        if name == "objects":
            where = "`[objects.<name>]` (TOML only)"
        rows.append(
            {
                "name": name,
                "variable": where,
                "type": kind + (f" ({limits})" if limits else ""),
                "default": _default(field),
                "meaning": (field.description or "").replace("|", "\\|"),
            }
        )
    return rows


def settings_table() -> str:
    lines = [
        "| variable | TOML key | type | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for r in settings_rows():
        lines.append(
            f"| {r['variable']} | `{r['name']}` | {r['type']} | {r['default']} | {r['meaning']} |"
        )
    return "\n".join(lines)


def _between(name: str, current: str, begin: str, end: str, generated: str) -> str:
    """``current`` with the text between the markers replaced by ``generated``."""
    head, sep, rest = current.partition(begin)
    if not sep or end not in rest:
        raise SystemExit(f"docs/{name}: markers {begin!r} ... {end!r} not found")
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{generated}\n{end}{tail}"


def configuration_md(current: str) -> str:
    """``current`` with the text between the markers replaced by the generated table."""
    return _between("configuration.md", current, BEGIN, END, settings_table())


# -- mapping reference -----------------------------------------------------------------------


def _values(enum: Any) -> str:
    return ", ".join(f"`{m.value}`" for m in enum)


def _mapping_type(name: str, field: Any) -> str:
    """The kind of value a mapping key takes, in words."""
    from crmsync.domain import ConflictRule, FieldType, Flow

    text = str(field.annotation)
    for enum, what in ((FieldType, "type"), (Flow, "flow"), (ConflictRule, "rule")):
        if enum.__name__ in text and "dict" not in text:
            return f"one of the {what}s below"
    if name == "fields":
        return "table: column → attribute name, or field table"
    if name == "choices":
        return "table: local value (text, ≤ 100 characters) → option value (integer)"
    if "dict" in text:
        return "table: column → " + ("rule" if "ConflictRule" in text else "flow")
    limits = _range(field.metadata)
    if "bool" in text:
        return "true or false"
    base = "integer" if "int" in text else "text"
    return base + (f" ({limits})" if limits else "")


def _keys_table(model: Any) -> list[str]:
    lines = ["| key | value | meaning |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {_mapping_type(name, field)} | {meaning} |")
    return lines


def _default_mapping_table() -> list[str]:
    from crmsync.domain import FieldType
    from crmsync.mapping import default_objects

    lines = [
        "| object | entity set | flow | conflict rule | label "
        "| fields (column → attribute, type) |",
        "|---|---|---|---|---|---|",
    ]
    for spec in default_objects().values():
        fields = []
        for f in spec.field_specs.values():
            detail = f"{f.type}"
            if f.type is FieldType.STRING:
                detail += f" {f.max_length}"
            if f.type is FieldType.LOOKUP:
                detail += f" to {f.target}" + (f" via `{f.navigation}`" if f.navigation else "")
            fields.append(f"`{f.column}` → `{f.attribute}` ({detail})")
        lines.append(
            f"| `{spec.name}` | `{spec.entity_set}` | `{spec.flow}` | `{spec.conflict_rule}` "
            f"| `{spec.label_column}` | {'; '.join(fields)} |"
        )
    return lines


def mapping_reference() -> str:
    """The reference part of ``docs/mapping.md``, from ``crmsync.mapping.model``."""
    from crmsync.domain import ConflictRule, FieldType, Flow
    from crmsync.mapping import model
    from crmsync.mapping.build import (
        RESERVED_ATTRIBUTES,
        RESERVED_COLUMNS,
        RESERVED_TABLE_PREFIXES,
    )

    places = ", ".join(f"{kind} ≤ {n}" for kind, n in model.MAX_PLACES.items())
    return "\n".join(
        [
            "### Object keys: `[objects.<name>]`",
            "",
            *_keys_table(model.ObjectEntry),
            "",
            "### Field keys: `[objects.<name>.fields]`, `column = { ... }`",
            "",
            *_keys_table(model.FieldEntry),
            "",
            "### Allowed values",
            "",
            f"- types (`type`): {_values(FieldType)}",
            f"- flows (`flow`, `field_flows`): {_values(Flow)}",
            f"- conflict rules (`conflict_rule`, `field_rules`): {_values(ConflictRule)}",
            "",
            "### Limits (Dataverse's)",
            "",
            "| what | limit |",
            "|---|---|",
            f"| `string` `max_length` | ≤ {model.MAX_STRING:,} |",
            f"| `memo` `max_length` | ≤ {model.MAX_MEMO:,} |",
            f"| `integer` range | {model.INT32[0]:,} .. {model.INT32[1]:,} |",
            f"| `decimal` range | {model.DECIMAL_RANGE[0]:,} .. {model.DECIMAL_RANGE[1]:,} |",
            f"| `money` range | {model.MONEY_RANGE[0]:,} .. {model.MONEY_RANGE[1]:,} |",
            f"| `precision` (decimal places) | {places}; default {model.DEFAULT_PLACES} |",
            "",
            "### Names",
            "",
            "| what | must match |",
            "|---|---|",
            f"| an object's name, `table`, a column | `{model.SQL_NAME.pattern}` |",
            f"| `entity_set`, `logical_name`, `primary_key`, `attribute` "
            f"| `{model.LOGICAL_NAME.pattern}` |",
            f"| `navigation` | `{model.NAVIGATION.pattern}` |",
            "",
            "crmsync keeps these itself, and a mapping may not use them: the columns "
            + ", ".join(f"`{c}`" for c in sorted(RESERVED_COLUMNS))
            + "; tables whose names start with "
            + ", ".join(f"`{p}`" for p in RESERVED_TABLE_PREFIXES)
            + "; the attributes "
            + ", ".join(f"`{a}`" for a in sorted(RESERVED_ATTRIBUTES))
            + ".",
            "",
            "### The default mapping",
            "",
            *_default_mapping_table(),
        ]
    )


def mapping_md(current: str) -> str:
    """``current`` with the text between the markers replaced by the generated reference."""
    return _between("mapping.md", current, MAPPING_BEGIN, MAPPING_END, mapping_reference())


# -- API reference ---------------------------------------------------------------------------


def openapi() -> dict[str, Any]:
    from crmsync.config import load_settings
    from crmsync.web.app import create_app

    # An in-memory store: the document does not depend on any data.
    app = create_app(load_settings(database_url="sqlite://"))
    doc: dict[str, Any] = app.openapi()
    return doc


def _schema_text(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        kinds = [_schema_text(s) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(kinds) or "null"
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "allOf" in schema:
        return " and ".join(_schema_text(s) for s in schema["allOf"])
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    kind = str(schema.get("type", "any"))
    if kind == "array":
        return f"array of {_schema_text(schema.get('items', {}))}"
    if "maxLength" in schema:
        kind = f"{kind} (at most {schema['maxLength']})"
    return f"{kind} ({schema['format']})" if "format" in schema else kind


def _param_row(p: dict[str, Any]) -> str:
    schema = p.get("schema", {})
    notes = []
    if "enum" in schema:
        notes.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    for key, label in (("minimum", "≥"), ("maximum", "≤")):
        if key in schema:
            notes.append(f"{label} {schema[key]}")
    if "default" in schema:
        notes.append(f"default `{schema['default']}`")
    description = p.get("description") or schema.get("description") or ""
    if description and description.lower() == p["name"].lower():
        description = ""
    text = "; ".join(x for x in (description, *notes) if x)
    required = "yes" if p.get("required") else "no"
    kind = _schema_text({k: v for k, v in schema.items() if k != "enum"})  # enum: in notes
    return f"| `{p['name']}` | {p['in']} | {kind} | {required} | {text} |"


def api_md() -> str:
    doc = openapi()
    out = [
        "# API reference",
        "",
        "<!-- GENERATED by docs/generate.py from the app's OpenAPI document; do not edit. -->",
        "",
        f"{doc['info']['title']} API version {doc['info']['version']}. JSON under `/api/v1`, "
        "authenticated with `Authorization: Bearer <CRMSYNC_API_TOKEN>` or a console session "
        '(`/healthz` needs neither). Errors are `{"error": {"code", "message"}}` with a '
        "4xx status; bad input never yields a 500. The live document is at "
        "`/api/v1/openapi.json` and Swagger UI at `/api/v1/docs`.",
        "",
    ]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, methods in doc["paths"].items():
        if path.startswith("/api/v1/records/") and "{object}" not in path:
            continue  # an object's own paths: the {object} routes with its schemas
        for method, op in methods.items():
            tag = (op.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).append((path, method, op))
    for tag, ops in by_tag.items():
        out += [f"## {tag.capitalize()}", ""]
        if tag == "records":
            out += [
                "The live document also lists each mapped object's own paths "
                "(`/api/v1/records/lead`, `/api/v1/records/lead/{id}`, ...): these routes "
                "for that object, with its typed schemas (`LeadFields` for what may be "
                "written, `LeadRecord` for what is read; below).",
                "",
            ]
        for path, method, op in ops:
            out += [f"### `{method.upper()} {path}`", ""]
            if op.get("description") or op.get("summary"):
                out += [(op.get("description") or op["summary"]).strip(), ""]
            if op.get("security"):
                out += ["Authentication: bearer token or console session.", ""]
            params = op.get("parameters", [])
            if params:
                out += [
                    "| parameter | in | type | required | notes |",
                    "|---|---|---|---|---|",
                    *(_param_row(p) for p in params),
                    "",
                ]
            body = op.get("requestBody")
            if body:
                content = body.get("content", {})
                kinds = ", ".join(f"`{k}`" for k in content)
                schema = next(iter(content.values()), {}).get("schema", {})
                out += [f"Body ({kinds}): {_schema_text(schema)}.", ""]
            responses = op.get("responses", {})
            if responses:
                out += ["| status | meaning |", "|---|---|"]
                for code, r in responses.items():
                    text = r.get("description", "")
                    schema = r.get("content", {}).get("application/json", {}).get("schema")
                    if schema and code.startswith("2"):
                        text = f"{text}: {_schema_text(schema)}"
                    out.append(f"| {code} | {text} |")
                out.append("")
    schemas = doc.get("components", {}).get("schemas", {})
    if schemas:
        out += ["## Schemas", ""]
        for name, schema in schemas.items():
            out += [f"### {name}", ""]
            if schema.get("description"):
                out += [schema["description"].strip(), ""]
            props = schema.get("properties", {})
            if props:
                required = set(schema.get("required", []))
                out += ["| field | type | required | description |", "|---|---|---|---|"]
                for prop, s in props.items():
                    req = "yes" if prop in required else "no"
                    out.append(
                        f"| `{prop}` | {_schema_text(s)} | {req} | {s.get('description', '')} |"
                    )
                out.append("")
    return "\n".join(line.replace("\n", " ") if line.startswith("|") else line for line in out)


# -- error categories and fixes --------------------------------------------------------------


def fixes_table() -> str:
    """The table of ``crmsync.diagnosis.FIXES``: the ERROR ``fix`` texts, verbatim."""
    from crmsync import diagnosis

    lines = [
        "| category | code | what it means | fix (the ERROR `fix`) | retried by itself |",
        "|---|---|---|---|---|",
    ]
    for f in diagnosis.FIXES:
        code = f"`{f.code}`" if f.code else "any other"
        auto = "yes" if f.category in diagnosis.PASSING else "no"
        lines.append(f"| `{f.category}` | {code} | {f.meaning} | {f.fix} | {auto} |")
    return "\n".join(lines)


def troubleshooting_md(current: str) -> str:
    return _between("troubleshooting.md", current, FIXES_BEGIN, FIXES_END, fixes_table())


# -- main ----------------------------------------------------------------------------------


def targets() -> dict[Path, str]:
    config = DOCS / "configuration.md"
    mapping = DOCS / "mapping.md"
    trouble = DOCS / "troubleshooting.md"
    return {
        trouble: troubleshooting_md(trouble.read_text(encoding="utf-8")),
        config: configuration_md(config.read_text(encoding="utf-8")),
        mapping: mapping_md(mapping.read_text(encoding="utf-8")),
        DOCS / "api.md": api_md() + "\n",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in targets().items():
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == text:
            continue
        if args.check:
            stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(DOCS.parent)}")
    if stale:
        print(f"stale: {', '.join(stale)}; run `make docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
