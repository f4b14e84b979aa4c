"""The mapping this process runs with: read once at start-up, like every setting.

The CLI's commands, ``create_app`` and ``Worker`` activate the configured mapping; code
that knows an object only by its name (a queue entry's, a log row's) looks its
declaration up here. Until a process activates one, the default mapping is in force.
"""

from __future__ import annotations

from collections.abc import Mapping

from crmsync.domain import ObjectSpec
from crmsync.mapping.build import default_objects

_active: dict[str, ObjectSpec] | None = None


def activate(specs: Mapping[str, ObjectSpec]) -> None:
    global _active
    _active = dict(specs)


def active() -> dict[str, ObjectSpec]:
    """Every mapped object, by name, in the mapping's order."""
    return dict(_active) if _active is not None else default_objects()


def spec_of(name: str) -> ObjectSpec:
    """The declaration of the mapped object ``name`` (KeyError if it is not mapped)."""
    return (_active if _active is not None else default_objects())[name]
