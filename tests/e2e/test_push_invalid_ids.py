"""A ``crm_id`` that is not a Dynamics id never reaches Dynamics (issue 16 item 7).

Any program may write a local row's ``crm_id``; crmsync once sent ``PATCH
leads(<svg onload=alert(3)>)``. The push plan parks such an entry as its own sync error
(``crmsync.invalid_crm_id``), which says what is wrong, and the other records go on.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.engine.plan import INVALID_CRM_ID
from crmsync.store.schema import sync_error, sync_queue

BAD = "<svg onload=alert(3)>"


def test_a_row_with_a_bad_crm_id_is_a_visible_sync_error_and_others_sync(
    sync_settings: Settings, store: sa.Engine, sql: Any, drain: Any, crm_rows: Any
) -> None:
    sql(store, "INSERT INTO lead (email, crm_id) VALUES ('bad@example.com', :c)", {"c": BAD})
    sql(store, "INSERT INTO lead (email) VALUES ('good@example.com')")
    drain(sync_settings, store)

    with store.connect() as conn:
        errors = conn.execute(
            sa.select(sync_error.c.error_code, sync_error.c.error_message, sync_error.c.status)
        ).all()
        parked = conn.execute(
            sa.select(sync_queue.c.state, sync_queue.c.label).where(
                sync_queue.c.direction == "to_crm"
            )
        ).all()
    assert [(code, status) for code, _, status in errors] == [(INVALID_CRM_ID, "open")]
    assert "is not a Dynamics id" in errors[0][1] and BAD in errors[0][1]
    assert parked == [("parked", "bad@example.com")]
    emails = {r["emailaddress1"] for r in crm_rows(sync_settings.dynamics_url)}
    assert emails == {"good@example.com"}
