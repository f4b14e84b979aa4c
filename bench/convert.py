"""Cost of typed value conversion in a push: building Dataverse bodies for a wide object
(40 mapped fields of mixed types) through the mapping's conversions, against encoding
the same rows, already in their JSON form, as plain JSON, in the same run.

The push builds each body (``plan.body_for``: one ``to_dataverse`` per field) and the
client then encodes it as JSON; the ratio printed is the conversion's time over the
JSON encoding's. Rounds alternate and medians are compared. Target (issue 15): value
conversion under 10% of a push's CPU; JSON encoding is a small part of that CPU, so a
ratio near or below 1 meets it (the push bench's CPU per record is ~30x the encoding).

    .venv/bin/python bench/convert.py [--rows 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from crmsync.engine.plan import body_for
from crmsync.mapping import build

KINDS = ["string", "integer", "decimal", "money", "boolean", "datetime", "date", "choice"]


def wide_mapping() -> dict[str, Any]:
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
            "fields": fields,
        }
    }


def value(kind: str, n: int) -> Any:
    return {
        "string": f"text {n}",
        "integer": n,
        "decimal": Decimal(n) / 100,
        "money": Decimal(n) / 10,
        "boolean": n % 2 == 0,
        "datetime": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n),
        "date": date(2026, 1, 1) + timedelta(days=n % 365),
        "choice": ("low", "mid", "high")[n % 3],
    }[kind]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    spec = build(wide_mapping())["wide"]
    kinds = {c: f.type.value for c, f in spec.field_specs.items()}
    rows = [{c: value(k, n) for c, k in kinds.items()} for n in range(args.rows)]
    bodies = [body_for(spec, r, {})[0] for r in rows]  # the JSON form, built once
    convert_times, encode_times = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for r in rows:
            body_for(spec, r, {})
        convert_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        for b in bodies:
            json.dumps(b)
        encode_times.append(time.perf_counter() - started)
    convert, encode = statistics.median(convert_times), statistics.median(encode_times)
    per = 1e6 / args.rows
    print(f"wide object: {len(spec.field_specs)} fields, {args.rows:,} rows, {args.rounds} rounds")
    print(f"convert (body_for): {convert * per:.1f} µs/row   json.dumps: {encode * per:.1f} µs/row")
    print(f"conversion / JSON encoding: {convert / encode:.2f}")


if __name__ == "__main__":
    main()
