"""A choice's options read from Dynamics' metadata, laid into the mapping. No I/O.

A ``choice`` field without ``choices`` and with ``labels = true`` keeps its options'
labels locally; which label is which option value is Dynamics' to say. ``wanted(specs)``
names the tables whose Choice columns a worker reads when it starts;
``with_options(specs, read)`` gives the specs with each such field's ``choices`` the
(label, value) pairs of its column in Dynamics' order (``options_read``), so that the
conversion (``convert.py``) is the one of declared choices; and, per object, why it
could not (a table or a Choice column Dynamics does not have). An object with such a
problem keeps fields that convert nothing: the worker pauses it. ``laid_in`` lays options
read again (or stored by a worker, for ``crmsync serve``) into one object;
``unknown_options`` names the fields of values Dynamics sent that no option read has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from crmsync.domain import ObjectSpec

# An attribute's (option value, label) pairs (``dynamics.metadata.Options``).
Options = tuple[tuple[int, str], ...]


def wanted(specs: Mapping[str, ObjectSpec]) -> dict[str, str]:
    """The objects with a choice whose options Dynamics must give: name → logical name."""
    return {
        s.name: s.logical_name
        for s in specs.values()
        if any(f.needs_options for f in s.field_specs.values())
    }


def with_options(
    specs: Mapping[str, ObjectSpec], read: Mapping[str, Mapping[str, Options] | None]
) -> tuple[dict[str, ObjectSpec], dict[str, str]]:
    """``specs`` with the options ``read`` (object name → its table's Choice columns, None
    for a table Dynamics lacks) laid in; and, by object, the problem that kept it out."""
    out = dict(specs)
    problems: dict[str, str] = {}
    for name, spec in specs.items():
        fields = [f for f in spec.field_specs.values() if f.needs_options]
        if not fields or name not in read:
            continue
        columns = read[name]
        if columns is None:
            problems[name] = (
                f"Dynamics has no table {spec.logical_name!r} to read the options of "
                f"{', '.join(f.column for f in fields)} from"
            )
            continue
        missing = [f for f in fields if f.attribute not in columns]
        if missing:
            problems[name] = "; ".join(
                f"{name}.{f.column}: Dynamics has no Choice column "
                f"{spec.logical_name}.{f.attribute} to read the options from (declare the "
                "choices of a Status, State or Yes/No column in the mapping)"
                for f in missing
            )
            continue
        out[name] = laid_in(spec, columns)
    return out, problems


def laid_in(spec: ObjectSpec, columns: Mapping[str, Options]) -> ObjectSpec:
    """``spec`` with the options of ``columns`` (attribute → options) laid into its
    choices whose labels Dynamics gives; a field whose attribute is not in ``columns``
    is left as it is. A field whose options were read already takes them again (a
    worker reading them while it runs)."""
    resolved = dict(spec.field_specs)
    for f in spec.field_specs.values():
        if (f.needs_options or f.options_read) and f.attribute in columns:
            resolved[f.column] = dataclasses.replace(
                f,
                choices=tuple((label, value) for value, label in columns[f.attribute]),
                options_read=True,
            )
    if resolved == spec.field_specs:
        return spec
    return dataclasses.replace(spec, field_specs=resolved)


def read_fields(spec: ObjectSpec) -> list[str]:
    """The columns of ``spec`` whose options a worker read from Dynamics."""
    return [c for c, f in spec.field_specs.items() if f.options_read]


def unknown_options(spec: ObjectSpec, values: Mapping[str, Any]) -> list[str]:
    """The columns of ``spec`` whose options were read and whose value in ``values`` (the
    JSON Dynamics sent) is an option value none of them has: the options may have
    changed since they were read."""
    out = []
    for column in read_fields(spec):
        value = values.get(column)
        if value is None:
            continue
        known = {option for _, option in spec.field_specs[column].choices}
        if value not in known:
            out.append(column)
    return out
