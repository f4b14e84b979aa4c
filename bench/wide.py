"""A wide object for the benchmarks: 40 mapped fields of mixed types (issue 15)."""

from __future__ import annotations

from typing import Any

KINDS = ["string", "integer", "decimal", "money", "boolean", "datetime", "date", "choice"]


def wide_mapping() -> dict[str, Any]:
    """The ``objects`` tables of a mapping with the wide object ``wide``."""
    fields: dict[str, Any] = {}
    for i in range(40):
        kind = KINDS[i % len(KINDS)]
        entry: dict[str, Any] = {"attribute": f"new_f{i}", "type": kind}
        if kind == "choice":
            entry["choices"] = {"low": 1, "mid": 2, "high": 3}
        fields[f"f{i}"] = entry
    return {
        "wide": {
            "entity_set": "new_wides",
            "logical_name": "new_wide",
            "primary_key": "new_wideid",
            "label": "f0",
            "flow": "both",
            "fields": fields,
        }
    }
