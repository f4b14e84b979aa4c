"""``crmsync worker --once --dry-run``: what a push would send now, sending nothing.

The same plan as a push makes (``plan.plan_batch``), over the entries a push would
claim next and the capture log's unfolded changes, read in one read-only snapshot:
nothing is claimed, folded, sent or written. Ids a push would choose for new records
are shown as "a new id" (a push chooses and saves them just before sending).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crmsync.config import Settings
from crmsync.engine.plan import Step, plan_batch
from crmsync.store import outbound
from crmsync.store.db import read_transaction
from crmsync.store.types import utcnow

if TYPE_CHECKING:  # the engine passes the store's handles on; it runs no SQL
    from sqlalchemy import Engine


def plan_waiting(engine: Engine, settings: Settings, limit: int) -> list[Step]:
    """The plan for up to ``limit`` waiting entries per pushed object."""
    specs = settings.object_specs()
    objects = [s.name for s in specs.values() if s.flow.pushes]
    with read_transaction(engine) as conn:
        entries = outbound.waiting(conn, objects, limit, utcnow())
        rows = outbound.load_rows(conn, specs, entries)
        parents = outbound.load_parents(conn, specs, rows, unfolded=True)
        etags, excluded = outbound.load_sync_state(conn, entries)
    return plan_batch(
        entries,
        specs,
        rows,
        parents,
        etags,
        excluded,
        detect_duplicates=settings.duplicate_detection,
    )
