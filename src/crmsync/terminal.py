"""Rich renderings of the Sync Status and Sync Errors data for ``crmsync`` commands.

The data is exactly what the API returns (``store.status``, ``store.sync_errors``);
this module only lays it out, as the console's HTML pages will.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

NA = "N/A"


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _count(value: int | None) -> str:
    return NA if value is None else f"{value:,}"


def _paused_line(body: dict[str, Any]) -> str | None:
    paused = body.get("paused") or []
    if not paused:
        return None
    scopes = ", ".join(f"{p['object']}/{p['direction']}" for p in paused)
    return f"Paused: {scopes}"


def _eta(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def print_status(body: dict[str, Any]) -> None:
    """The Sync Status table: backlog, last hour, or one object's details."""
    if "by_direction" in body:
        print_details(body)
        return
    last_hour = body["view"] == "last_hour"
    if last_hour:
        window = body["window"]
        title = f"Sync Status - last hour {window['start']} to {window['end']}"
    else:
        title = f"Sync Status - backlog as of {body['as_of']}"
    table = Table(title=title)
    for header in ("Object", "Inserts", "Updates", "Deletes"):
        table.add_column(header, justify="left" if header == "Object" else "right")
    if last_hour:
        table.add_column("Synced", justify="right")
    else:
        for header in ("Total", "Oldest queued", "Trend", "ETA"):
            table.add_column(header, justify="right")
    for row in body["objects"]:
        cells = [row["object"], _count(row["inserts"]), _count(row["updates"])]
        cells.append(_count(row["deletes"]))
        if last_hour:
            cells.append(_count(row["synced"]))
        else:
            cells += [
                _count(row["total"]),
                row["oldest_queued_at"] or "-",
                row.get("trend") or "-",
                _eta(row.get("eta_seconds")),
            ]
        table.add_row(*cells)
    console = _console()
    console.print(table)
    if not last_hour:
        since = body.get("trend_since")
        basis = f"the backlog at {since}" if since else "no backlog sample old enough yet"
        console.print(f"Trend: against {basis}. ETA: the backlog at last hour's sync rate.")
    paused = _paused_line(body)
    if paused:
        console.print(paused)


def print_details(body: dict[str, Any]) -> None:
    table = Table(title=f"{body['object']} backlog as of {body['as_of']}")
    for header in ("Operation", "Pending", "to_crm", "from_crm", "Oldest record", "Queued at"):
        table.add_column(header)
    for op in ("inserts", "updates", "deletes"):
        oldest = body[op]["oldest"]
        who = "-"
        when = "-"
        if oldest is not None:
            ident = oldest["record_id"] if oldest["record_id"] is not None else oldest["crm_id"]
            who = f"{oldest['label'] or ''} (#{ident}, {oldest['direction']})".strip()
            when = f"{oldest['queued_at']} ({_eta(oldest['age_seconds'])} ago)"
        table.add_row(
            op.capitalize(),
            _count(body[op]["pending"]),
            _count(body["by_direction"]["to_crm"][op]),
            _count(body["by_direction"]["from_crm"][op]),
            who,
            when,
        )
    console = _console()
    console.print(table)
    paused = _paused_line(body)
    if paused:
        console.print(paused)


def print_errors(page: dict[str, Any]) -> None:
    table = Table(title=f"Sync Errors ({len(page['items'])} of {page['total']})")
    for header in ("Id", "Object", "Record", "Op", "Direction", "Code", "Message", "Last failed"):
        table.add_column(header)
    for e in page["items"]:
        record = e["record_label"] or str(e["record_id"] or e["crm_id"] or "")
        table.add_row(
            str(e["id"]),
            e["object"],
            record,
            e["operation"],
            e["direction"],
            e["error_code"],
            e["error_message"],
            e["last_failed_at"],
        )
    _console().print(table, markup=False)
