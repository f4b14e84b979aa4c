"""Reading collection pages and change-tracking (delta) pages. Pure functions, no I/O.

Paging (query/page-results): ask with ``Prefer: odata.maxpagesize=N`` (5,000 at most),
follow ``@odata.nextLink`` exactly as given ("Don't change the @odata.nextLink URL value or
append any query options"), send the same maxpagesize every time, stop when there is none.

Change tracking (use-change-tracking-synchronize-data-external-systems): the first request
carries ``Prefer: odata.track-changes``; the last page of every answer carries
``@odata.deltaLink``. Following a delta link returns changed rows in full and deleted rows
as ``{"@odata.context": "...$deletedEntity", "id": "<guid>", "reason": "deleted"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crmsync.errors import Fatal

MAX_PAGE_SIZE = 5000


@dataclass(frozen=True)
class Page:
    """One page of a query: rows as Dataverse returned them."""

    rows: list[dict[str, Any]]
    next_link: str | None = None


@dataclass(frozen=True)
class ChangePage:
    """One page of changes. ``delta_link`` is set on the last page only: store it once the
    whole answer has been applied, and pass it back next time."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    deleted_ids: list[str] = field(default_factory=list)
    next_link: str | None = None
    delta_link: str | None = None


def prefer(*values: str) -> str:
    return ",".join(v for v in values if v)


def max_page_size(value: int) -> str:
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise ValueError(f"page size must be between 1 and {MAX_PAGE_SIZE}")
    return f"odata.maxpagesize={value}"


def _collection(body: Any) -> tuple[Mapping[str, Any], list[Any]]:
    if not isinstance(body, Mapping) or not isinstance(body.get("value"), list):
        raise Fatal("Dynamics returned a collection without a 'value' array")
    return body, body["value"]


def parse_page(body: Any) -> Page:
    data, rows = _collection(body)
    return Page(
        rows=[r for r in rows if isinstance(r, dict)], next_link=data.get("@odata.nextLink")
    )


def is_deleted_entry(row: Mapping[str, Any]) -> bool:
    context = row.get("@odata.context")
    return (isinstance(context, str) and context.endswith("$deletedEntity")) or (
        row.get("reason") == "deleted" and "id" in row
    )


def parse_change_page(body: Any) -> ChangePage:
    # The doc says an empty JSON response comes back when nothing changed; treat a body
    # without "value" as an empty page rather than an error.
    if isinstance(body, Mapping) and "value" not in body:
        return ChangePage(delta_link=body.get("@odata.deltaLink"))
    data, raw = _collection(body)
    rows: list[dict[str, Any]] = []
    deleted: list[str] = []
    for row in raw:
        if not isinstance(row, dict):
            continue
        if "@odata.context" not in row and "reason" not in row:
            rows.append(row)  # nearly every row (a deleted entry has one of these keys)
        elif is_deleted_entry(row):
            deleted.append(str(row["id"]).lower())
        else:
            rows.append(row)
    return ChangePage(
        rows=rows,
        deleted_ids=deleted,
        next_link=data.get("@odata.nextLink"),
        delta_link=data.get("@odata.deltaLink"),
    )
