"""The command names the objects of the mapping in force, in its help and its checks.

An object option's help is written with the default mapping's names (``NAMED``);
``command(app)`` is the click command with the names of the mapping ``CRMSYNC_CONFIG``
gives instead (the default's when the configuration cannot be read: the command says
why when it runs, and ``--help`` still answers). ``check_object`` refuses a name the
mapping does not have, listing those it has, before anything is opened.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import typer

from crmsync.domain import STANDARD_OBJECTS
from crmsync.errors import ConfigError, ValidationFailed

NAMED = ", ".join(STANDARD_OBJECTS)


def mapped_names() -> list[str]:
    """The objects of the configured mapping, in its order (the default's if the
    configuration cannot be read)."""
    from crmsync.config import settings_from

    try:
        return list(settings_from({}).object_specs())
    except ConfigError:
        return list(STANDARD_OBJECTS)


def command(app: typer.Typer, names: Iterable[str] | None = None) -> Any:
    """``app`` as a click command whose object options name ``names`` (by default the
    configured mapping's objects)."""
    listed = ", ".join(mapped_names() if names is None else names)
    root = typer.main.get_command(app)
    for cmd in _commands(root):
        for param in cmd.params:
            help_text = getattr(param, "help", None)
            if param.name == "object" and help_text and NAMED in help_text:
                param.help = help_text.replace(NAMED, listed)
    return root


def _commands(cmd: Any) -> Iterator[Any]:
    """``cmd`` and its subcommands (typer's click command tree)."""
    yield cmd
    for sub in (getattr(cmd, "commands", None) or {}).values():
        yield from _commands(sub)


def check_object(name: str | None, specs: Mapping[str, object]) -> str | None:
    """``name`` if it is a mapped object (or None); else ``ValidationFailed`` listing them."""
    if name is not None and name not in specs:
        raise ValidationFailed("object", f"unknown object {name!r}; one of {', '.join(specs)}")
    return name
