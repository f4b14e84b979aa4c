"""A worker's options of the choices whose labels the store keeps, read and read again.

A ``choice`` without ``choices`` and with ``labels = true`` keeps its option's label
locally; the worker reads each such table's Choice columns from Dynamics' metadata
before it syncs anything (``prepare``; an outage is waited out, a table or column
Dynamics lacks pauses that object alone). While it runs, ``Refresher`` reads a table's
options again every ``choice_refresh_seconds``, and when a value is none of them (a
label pushed, an option pulled) at most once per ``choice_reread_seconds`` per table: a
bad value in every record of a bulk load costs one read, not one per record. A change
is laid into the lanes' specs, and its fields' parked choice errors whose refused value
is now an option are retried. Every read is stored (``store/choices.py``) for ``crmsync
serve``. Local values that are none of the options are logged (``mapping.choice_unknown``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from crmsync.config import Settings
from crmsync.domain import Direction, ObjectSpec
from crmsync.dynamics.client import DataverseClient
from crmsync.dynamics.metadata import Options, read_choice_options
from crmsync.engine.retry import backoff_seconds
from crmsync.errors import Refusal, Retriable
from crmsync.mapping import activate as activate_mapping
from crmsync.mapping import options
from crmsync.mapping.convert import INVALID_VALUE
from crmsync.store.choice_errors import retry_known
from crmsync.store.choices import save_options, unknown_values
from crmsync.store.db import store_unavailable, write_transaction
from crmsync.store.status import pause_unusable
from crmsync.store.types import utcnow
from crmsync.values import UNMAPPABLE

if TYPE_CHECKING:  # the engine passes the store's handle on; it runs no SQL
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

RETRY_BASE_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
RETRY_ACTOR = "crmsync:choice_options"


class _Refused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def prepare(
    engine: Engine,
    client: DataverseClient,
    specs: Mapping[str, ObjectSpec],
    stopping: asyncio.Event,
) -> dict[str, ObjectSpec]:
    """``specs`` with the options Dynamics gives laid in (``specs`` as they are when there
    is none to read, or when the worker is stopped while it waits for Dynamics); the
    objects that cannot have them are paused."""
    resolved, problems = await resolve(client, specs, stopping)
    if stopping.is_set():
        return dict(specs)
    if problems:
        await asyncio.to_thread(_pause, engine, specs, problems)
    try:
        for name in options.wanted(specs):
            if name not in problems:
                await asyncio.to_thread(_save, engine, resolved[name])
                await asyncio.to_thread(_report, engine, resolved[name])
    except Exception as exc:
        if not store_unavailable(exc):
            raise
        log.warning(  # a report only: the worker waits for the store in its lanes
            "local choice values not checked: the store is unavailable",
            extra={"event": "mapping.choices_unchecked", "error": str(exc).splitlines()[0][:300]},
        )
    return resolved


async def resolve(
    client: DataverseClient,
    specs: Mapping[str, ObjectSpec],
    stopping: asyncio.Event | None = None,
) -> tuple[dict[str, ObjectSpec], dict[str, str]]:
    """``specs`` with the options read, and why an object could not have them. Without
    ``stopping`` (a command, not a worker) Dynamics is asked once: ``Retriable`` is
    raised; with it, asked again until it answers or ``stopping`` is set."""
    wanted = options.wanted(specs)
    if not wanted:
        return dict(specs), {}
    found = await asyncio.gather(
        *(_read(client, logical, stopping) for logical in wanted.values()),
        return_exceptions=True,
    )
    read: dict[str, Mapping[str, Options] | None] = {}
    refused: dict[str, str] = {}
    for name, result in zip(wanted, found, strict=True):
        if isinstance(result, _Refused):
            refused[name] = result.message
        elif isinstance(result, BaseException):
            raise result
        else:
            read[name] = result
    resolved, problems = options.with_options(specs, read)
    return resolved, {**problems, **refused}


async def with_options(settings: Settings, client: DataverseClient) -> Settings:
    """``settings`` whose mapping has the options Dynamics gives, in force in this process
    (a command that converts values: a resync or an audit run here, a dry run)."""
    specs = settings.object_specs()
    if not options.wanted(specs):
        return settings
    resolved, _ = await resolve(client, specs)
    activate_mapping(resolved)
    return settings.with_specs(resolved)


async def settings_with_options(settings: Settings) -> Settings:
    """``with_options`` on a client of its own (a command that has none)."""
    if not options.wanted(settings.object_specs()):
        return settings
    async with DataverseClient.from_settings(settings) as client:
        return await with_options(settings, client)


async def _read(
    client: DataverseClient, logical_name: str, stopping: asyncio.Event | None
) -> dict[str, Options] | None:
    attempts = 0
    while True:
        try:
            return await read_choice_options(client, logical_name)
        except Retriable as exc:
            if stopping is None:
                raise
            attempts += 1
            if attempts == 1:
                log.warning(
                    "choice options not read from Dynamics; trying again",
                    extra={
                        "event": "mapping.options_unread",
                        "table": logical_name,
                        "error": str(exc)[:300],
                    },
                )
            delay = backoff_seconds(attempts, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS)
            delay = max(delay, exc.retry_after or 0.0)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=delay)
            except TimeoutError:
                continue
            return {}
        except Refusal as exc:
            if exc.status == 404:
                return None
            raise _Refused(
                f"the options of {logical_name}'s choices could not be read from Dynamics' "
                f"metadata ({exc}); give crmsync's user read access to metadata, or declare "
                "the choices in the mapping"
            ) from exc


def _pause(engine: Engine, specs: Mapping[str, ObjectSpec], problems: Mapping[str, str]) -> None:
    now = utcnow()
    with write_transaction(engine) as conn:
        for name, message in problems.items():
            log.warning(
                f"choice options unavailable: {message}",
                extra={"event": "mapping.options_unavailable", "object": name},
            )
            way = Direction.TO_CRM if specs[name].flow.pushes else Direction.FROM_CRM
            pause_unusable(conn, name, way, "", message, now)


def _save(engine: Engine, spec: ObjectSpec, retry: Mapping[str, bool] | None = None) -> None:
    """Store ``spec``'s options (for ``crmsync serve``); and retry the parked errors of
    the fields ``retry`` names, whose options changed, when the value refused is one of
    them now (a typo stays parked: retried, it would only be refused again)."""
    now = utcnow()
    with write_transaction(engine) as conn:
        save_options(conn, spec, now)
        if retry:
            codes = (INVALID_VALUE, UNMAPPABLE)
            retry_known(conn, spec, retry, codes, now, actor=RETRY_ACTOR)


class Refresher:
    """Reads the options of a running worker's tables again (see the module docstring).

    ``specs`` are the specs in force (with the options read at start); ``laid_in`` is
    told of each object whose options changed. ``reads`` counts the reads by object.
    The timings are the settings ``choice_refresh_seconds`` and ``choice_reread_seconds``."""

    def __init__(
        self,
        engine: Engine,
        client: DataverseClient,
        specs: Mapping[str, ObjectSpec],
        laid_in: Callable[[ObjectSpec], None],
        *,
        refresh_seconds: float,
        reread_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.client = client
        self.specs = {n: s for n, s in specs.items() if options.read_fields(s)}
        self.laid_in = laid_in
        self.clock = clock
        self.refresh_seconds = refresh_seconds
        self.reread_seconds = reread_seconds
        started = clock()
        self._read_at = dict.fromkeys(self.specs, started)
        self._changed_at = dict.fromkeys(self.specs, float("-inf"))
        self._locks = {name: asyncio.Lock() for name in self.specs}
        self.reads: dict[str, int] = dict.fromkeys(self.specs, 0)

    def covers(self, name: str) -> bool:
        return name in self.specs

    def changed_since(self, name: str, moment: float) -> bool:
        """Whether ``name``'s options in force changed at or after ``moment``."""
        return self._changed_at.get(name, float("-inf")) >= moment

    async def reread(self, name: str) -> None:
        """Read ``name``'s options again, unless they were read in the last
        ``reread_seconds`` (by this worker, for any reason)."""
        if name not in self.specs:
            return
        async with self._locks[name]:
            if self.clock() - self._read_at[name] < self.reread_seconds:
                return
            await self._read(name)

    async def run(self, stopping: asyncio.Event) -> None:
        """Read every table's options again each ``refresh_seconds`` until ``stopping``."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self._next_refresh())
            if stopping.is_set():
                return
            for name in self.specs:
                if self.clock() - self._read_at[name] >= self.refresh_seconds:
                    async with self._locks[name]:
                        await self._read(name)

    def _next_refresh(self) -> float:
        oldest = min(self._read_at.values(), default=self.clock())
        return max(0.05, oldest + self.refresh_seconds - self.clock())

    async def _read(self, name: str) -> None:
        spec = self.specs[name]
        self._read_at[name] = self.clock()
        self.reads[name] += 1
        try:
            columns = await read_choice_options(self.client, spec.logical_name)
        except (Retriable, Refusal) as exc:
            # The options in force stay; a value none of them has is refused as before.
            log.warning(
                "choice options not read again from Dynamics",
                extra={"event": "mapping.options_unread", "table": spec.logical_name,
                       "error": str(exc)[:300]},
            )  # fmt: skip
            return
        fresh = options.laid_in(spec, columns)
        changed = {
            column: True
            for column in options.read_fields(spec)
            if fresh.field_specs[column].choices != spec.field_specs[column].choices
        }
        if changed:
            self.specs[name] = fresh
            self._changed_at[name] = self.clock()
            self.laid_in(fresh)
            log.info(
                f"{name}: choice options changed in Dynamics ({', '.join(changed)}): in force",
                extra={"event": "mapping.choice_options_changed", "object": name,
                       "fields": list(changed)},
            )  # fmt: skip
        try:
            await asyncio.to_thread(_save, self.engine, fresh, changed)
            if changed:
                await asyncio.to_thread(_report, self.engine, fresh)
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            log.warning(
                "choice options not stored: the store is unavailable",
                extra={"event": "mapping.choices_unstored", "object": name},
            )


def _report(engine: Engine, spec: ObjectSpec) -> None:
    with engine.connect() as conn:
        for field in spec.field_specs.values():
            if not field.options_read:
                continue
            labels = [label for label, _ in field.choices]
            log.info(
                f"{spec.name}.{field.column}: {len(labels)} options read from Dynamics",
                extra={
                    "event": "mapping.choice_options",
                    "object": spec.name,
                    "field": field.column,
                    "options": len(labels),
                },
            )
            shown, rows = unknown_values(conn, spec, field, labels)
            if not rows:
                continue
            values = ", ".join(f"{value!r} ({n})" for value, n in shown)
            log.warning(
                f"{spec.name}.{field.column}: {rows} local rows hold values that are none of "
                f"{field.attribute}'s options in Dynamics: {values}. Dynamics may have "
                "renamed or removed an option: a record holding one is refused, naming the "
                f"field, when it is sent; `crmsync resync {spec.name} --direction from_crm` "
                "brings Dynamics' labels",
                extra={
                    "event": "mapping.choice_unknown",
                    "object": spec.name,
                    "field": field.column,
                    "rows": rows,
                },
            )
