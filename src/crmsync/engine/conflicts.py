"""Conflict resolution: both sides changed a field since the last sync. Pure functions.

The base is ``sync_record.synced_values``: the values both sides agreed on at the last
sync. A field changed in Dynamics if Dynamics' value differs from the base; it changed
locally if the record has a pending ``to_crm`` entry and the local value differs from
the base (on a rejoin after a sync-filter exclusion, whenever the local value differs
from the base: the record's pushes were dropped while it was out). When both changed it
to different values, the field's rule decides
(``ObjectSpec.rule_for``: per field, then per object; a field or object that does not
push always takes Dynamics' value), and the decision is journaled.

``newest_wins`` compares the local modification time (the pending entry's last captured
change) with Dynamics' ``modifiedon``; an unknown time counts as oldest, and a tie goes
to Dynamics, the system of record.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from crmsync.domain import ConflictRule, ObjectSpec
from crmsync.values import Conflict as Conflict
from crmsync.values import Resolution as Resolution
from crmsync.values import as_text as as_text


def rule_for(spec: ObjectSpec, column: str) -> ConflictRule:
    if not spec.flow_for(column).pushes:
        return ConflictRule.CRM_WINS
    return spec.rule_for(column)


def winner(
    rule: ConflictRule, local_modified_at: datetime | None, crm_modified_at: datetime | None
) -> str:
    if rule is ConflictRule.LOCAL_WINS:
        return "local"
    if rule is ConflictRule.CRM_WINS:
        return "crm"
    if local_modified_at is None:
        return "crm"
    if crm_modified_at is None or local_modified_at > crm_modified_at:
        return "local"
    return "crm"


def resolve(
    spec: ObjectSpec,
    base: Mapping[str, Any] | None,
    local: Mapping[str, Any] | None,
    remote: Mapping[str, Any],
    *,
    local_pending: bool,
    local_modified_at: datetime | None = None,
    crm_modified_at: datetime | None = None,
) -> Resolution:
    """Merge Dynamics' ``remote`` values (pulled local columns, lookups resolved) into
    the ``local`` row (None: the record is new locally)."""
    new_base = {**(base or {}), **remote}
    if local is None:
        return Resolution(values=dict(remote), synced_values=new_base)
    values: dict[str, Any] = {}
    conflicts: list[Conflict] = []
    for column, crm_value in remote.items():
        local_value = local.get(column)
        crm_changed = base is None or column not in base or crm_value != base[column]
        if base is not None and column in base:
            local_changed = local_value != base[column]
        else:
            local_changed = local_value != crm_value
        local_changed = local_changed and local_pending and spec.flow_for(column).pushes
        if not crm_changed or local_value == crm_value:
            continue
        if not local_changed:
            values[column] = crm_value
            continue
        rule = rule_for(spec, column)
        won = winner(rule, local_modified_at, crm_modified_at)
        conflicts.append(Conflict(column, local_value, crm_value, won, rule))
        if won == "crm":
            values[column] = crm_value
    pushed = [c for c in spec.columns if spec.flow_for(c).pushes]
    final = {**local, **values}
    push_needed = local_pending and any(
        final.get(c) != new_base.get(c) for c in pushed if c in new_base or c in local
    )
    return Resolution(values, new_base, conflicts, push_needed)
