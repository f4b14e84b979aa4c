"""Schema upgrades: Alembic migrations, then the capture triggers for the registry."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from crmsync.domain import ObjectSpec
from crmsync.errors import Fatal
from crmsync.store import local_tables
from crmsync.store.capture import ensure_triggers, install_triggers
from crmsync.store.db import write_transaction

MIGRATIONS = Path(__file__).parent / "migrations"

log = logging.getLogger(__name__)


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(
    engine: Engine,
    specs: Iterable[ObjectSpec],
    announce: Callable[[str], None] | None = None,
) -> list[str]:
    """Create or migrate crmsync's tables (Alembic), bring the local tables to the
    mapping (``local_tables.bring_to``: new tables and columns only) and install the
    triggers, in one transaction; returns the captured objects. A mapping the store
    cannot be brought to (an attached table that is not there) rolls it all back.

    ``announce`` is told, before it is done, each thing added to an application's
    (attached) table: its Dynamics id column, its capture triggers."""
    specs = list(specs)
    with write_transaction(engine) as conn:
        command.upgrade(alembic_config(conn), "head")
        local_tables.bring_to(conn, specs, announce)
        for spec in specs:
            if spec.attached and spec.flow.pushes:
                message = f"installing capture triggers on {spec.table}"
                log.info(message, extra={"event": "store.attached_table", "object": spec.name})
                if announce is not None:
                    announce(message)
        return install_triggers(conn, specs)


class StoreNotUpgraded(Fatal):
    """The store's schema is not the one this release needs: ``crmsync db upgrade``."""


def ensure_current(engine: Engine, specs: Iterable[ObjectSpec]) -> list[str] | None:
    """At a worker's or ``serve``'s start: refuse a store whose schema is not this
    release's (one line, naming the fix), and bring the capture triggers to the
    configured flows (``capture.ensure_triggers``), so that a flow changed in
    configuration without ``crmsync db upgrade`` loses no local change.

    Configuration is read once per process: a changed mapping takes effect when the
    processes restart, and each runs this again then."""
    specs = list(specs)
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise StoreNotUpgraded(
            f"the store is at schema revision {current or 'none'}, this crmsync needs {head}:"
            " run `crmsync db upgrade`"
        )
    with engine.connect() as conn:
        found = local_tables.differences(conn, specs)
    refused = local_tables.refusals(found)
    if refused:
        raise local_tables.LocalSchemaMismatch(
            "the store's tables do not match the mapping: " + "; ".join(refused)
        )
    if found:
        missing = ", ".join(str(d) for d in found)
        raise StoreNotUpgraded(
            f"the mapping has objects or fields the store lacks ({missing}):"
            " run `crmsync db upgrade`"
        )
    return ensure_triggers(engine, specs)


def ensure_current_if_reachable(engine: Engine, specs: Iterable[ObjectSpec]) -> None:
    """``ensure_current`` for ``serve``, which also starts on a store that is down or not
    upgraded yet (its health checks say so): then it only logs why, once, and the
    workers, which refuse or wait, bring the triggers to the configured flows."""
    try:
        ensure_current(engine, specs)
    except (SQLAlchemyError, StoreNotUpgraded, local_tables.LocalSchemaMismatch) as exc:
        text = str(exc).strip()
        log.warning(
            "capture triggers not checked",
            extra={
                "event": "store.triggers_unchecked",
                "error": text.splitlines()[0][:300] if text else type(exc).__name__,
            },
        )
