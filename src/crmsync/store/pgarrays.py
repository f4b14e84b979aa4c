"""PostgreSQL array parameters: a batch's rows in one parameter per column."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY


def unnest(name: str, **arrays: Any) -> Any:
    """A PostgreSQL ``unnest`` of array parameters ``<name>_<column>``: a batch's rows
    in one parameter per column, however many rows (the statement stays the same, so
    it is compiled once and its plan reused)."""
    return (
        sa.func.unnest(*(sa.bindparam(f"{name}_{k}", type_=ARRAY(t)) for k, t in arrays.items()))
        .table_valued(*(sa.column(k, t) for k, t in arrays.items()))
        .render_derived(name=name)
    )
