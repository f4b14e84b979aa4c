"""When a choice's options change, only the parked errors whose refused value is now an
option are retried: a label pushed that Dynamics has added since, an option pulled that
the worker now knows. A typo, an option still unknown, another field's error stay parked.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.domain import ObjectSpec
from crmsync.engine import changes as ch
from crmsync.engine import choices
from crmsync.engine.apply import Applier
from crmsync.engine.pull import entry_row
from crmsync.mapping import build
from crmsync.mapping.convert import INVALID_VALUE
from crmsync.mapping.options import laid_in, with_options
from crmsync.store import migrate, queue
from crmsync.store.db import write_transaction
from crmsync.store.inbound import stage
from crmsync.store.schema import sync_error, sync_queue
from crmsync.store.types import utcnow
from crmsync.values import UNMAPPABLE

RATING = {"attribute": "leadqualitycode", "type": "choice", "labels": True}
START = ((1, "Hot"), (2, "Warm"), (3, "Cold"))
LEASE = timedelta(seconds=30)


def _lead(engine: sa.Engine) -> ObjectSpec:
    specs = build({"lead": {"fields": {"rating": RATING}}})
    migrate.upgrade(engine, specs.values())
    resolved, _ = with_options(specs, {"lead": {"leadqualitycode": START}})
    return resolved["lead"]


def _park_pushes(engine: sa.Engine, rows: dict[str, tuple[str, str]]) -> None:
    """Local rows (email → rating, the field refused) parked as their push's error."""
    with write_transaction(engine) as conn:
        for email, (rating, _) in rows.items():
            conn.execute(
                sa.text("INSERT INTO lead (email, last_name, rating) VALUES (:e, 'L', :r)"),
                {"e": email, "r": rating},
            )
    entries = queue.claim(engine, "w", "to_crm", ["lead"], 10, LEASE)
    assert len(entries) == len(rows)
    failed = []
    for entry in entries:
        rating, field = rows[str(entry.label)]
        message = f"{field}: {rating!r} is not one of leadqualitycode's options in Dynamics"
        failed.append(queue.Failed(entry, INVALID_VALUE, message, field=field))
    queue.record(engine, queue.Outcome(failed=failed))


def _park_pulls(
    engine: sa.Engine, settings: Settings, lead: ObjectSpec, options: dict[str, int]
) -> None:
    """Dynamics records (crm id → option) pulled and parked: an option the worker lacks."""
    now = utcnow()
    with write_transaction(engine) as conn:
        stage(
            conn,
            [
                entry_row(
                    lead,
                    ch.Change(crm_id, {"email": f"{crm_id[:4]}@x.org", "rating": o}, {}),
                    "create",
                    None,
                    now,
                )
                for crm_id, o in options.items()
            ],
        )
    entries = queue.claim(engine, "w", "from_crm", ["lead"], 10, LEASE)
    Applier(engine, settings.with_specs({"lead": lead}), "w").apply_claimed(entries)


def _entries(engine: sa.Engine) -> dict[str, tuple[str, Any, str]]:
    """By record key: the entry's state, its error's field and code."""
    e, q = sync_error.c, sync_queue.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(q.direction, q.record_key, q.label, q.state, e.field, e.error_code).join(
                sync_error,
                sa.and_(
                    e.object == q.object,
                    e.direction == q.direction,
                    e.record_key == q.record_key,
                    e.status == "open",
                ),
            )
        ).all()
    return {
        (r.label if r.direction == "to_crm" else r.record_key): (r.state, r.field, r.error_code)
        for r in rows
    }


PULLED = {
    "11111111-0000-0000-0000-000000000004": 4,  # added in Dynamics since
    "11111111-0000-0000-0000-000000000009": 9,  # still none of the options
}


def test_only_the_errors_whose_value_is_now_an_option_are_retried(
    engine: sa.Engine, settings: Settings
) -> None:
    lead = _lead(engine)
    _park_pushes(
        engine,
        {
            "frozen@x.org": ("Frozen", "rating"),  # added in Dynamics since
            "typo@x.org": ("Lukewarm", "rating"),  # a typo: no option
            "other@x.org": ("Frozen", "last_name"),  # another field's error
        },
    )
    _park_pulls(engine, settings, lead, PULLED)
    four, nine = PULLED
    assert _entries(engine) == {
        "frozen@x.org": ("parked", "rating", INVALID_VALUE),
        "typo@x.org": ("parked", "rating", INVALID_VALUE),
        "other@x.org": ("parked", "last_name", INVALID_VALUE),
        four: ("parked", "rating", UNMAPPABLE),
        nine: ("parked", "rating", UNMAPPABLE),
    }

    fresh = laid_in(lead, {"leadqualitycode": (*START, (4, "Frozen"))})
    choices._save(engine, fresh, {"rating": True})

    assert {key: state for key, (state, _, _) in _entries(engine).items()} == {
        "frozen@x.org": "pending",
        "typo@x.org": "parked",
        "other@x.org": "parked",
        four: "pending",
        nine: "parked",
    }
    # The options are stored all the same.
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT value, label FROM sync_choice_option")).all()
    assert sorted(tuple(r) for r in stored) == [(1, "Hot"), (2, "Warm"), (3, "Cold"), (4, "Frozen")]


def test_no_field_named_retries_nothing(engine: sa.Engine, settings: Settings) -> None:
    lead = _lead(engine)
    _park_pushes(engine, {"frozen@x.org": ("Frozen", "rating")})
    fresh = laid_in(lead, {"leadqualitycode": (*START, (4, "Frozen"))})
    choices._save(engine, fresh, {})
    assert _entries(engine)["frozen@x.org"][0] == "parked"
