"""The Sync Status and Sync Errors data laid out for a terminal, for ``crmsync`` commands.

The data is exactly what the API returns (``store.status``, ``store.sync_errors``); this
module only lays it out, as the console's pages do. Layout is a pure function of the
data and the terminal's width (``lines_*`` return the lines; ``print_*`` print them):

- an id, an error code, a timestamp and an object name are never cut or wrapped: a
  reader copies them into a command or a search;
- only free text (an error message, a record's label) is folded to the width left, at
  spaces only (a word wider than the line, such as a GUID or an email, keeps a line of
  its own and overflows rather than being cut), and a message is shortened to
  ``MESSAGE_LINES`` lines (``--json`` and the export have it whole);
- when the columns do not fit the width, each row becomes a block of lines instead.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import typer

NA = "N/A"
NONE = "\u2014"  # no estimate
GAP = "  "
MESSAGE_LINES = 3
# A table whose free-text column would be narrower than this becomes blocks.
MIN_TEXT = 24
INDENT = "    "


def width() -> int:
    """The terminal's width (``COLUMNS`` first), at least 40."""
    return max(40, shutil.get_terminal_size((100, 24)).columns)


def count(value: int | None) -> str:
    return NA if value is None else f"{value:,}"


def stamp(value: str | None) -> str:
    """``2026-11-25 13:05:09`` (UTC, said in the headings) from an API timestamp."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    """``45s``, ``12m05s``, ``3h05m``, ``2d04h``."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    minutes, secs = divmod(s, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def drain_text(row: dict[str, Any]) -> str:
    """Time to drain as the console says it: a duration, ``paused`` or ``—``."""
    if not row.get("total"):
        return "-"
    if row.get("drain") == "paused":
        return "paused"
    eta = row.get("eta_seconds")
    return NONE if eta is None else duration(eta)


def wrap_tokens(tokens: Sequence[str], limit: int, indent: str = "", sep: str = "  ") -> list[str]:
    """Tokens joined by ``sep`` into lines of at most ``limit`` characters, a token never
    split (one longer than the line gets a line of its own)."""
    lines: list[str] = []
    line = ""
    for token in tokens:
        candidate = f"{line}{sep}{token}" if line else token
        if line and len(indent if lines else "") + len(candidate) > limit:
            lines.append(line)
            line = token
        else:
            line = candidate
    if line:
        lines.append(line)
    return [(indent if i else "") + text for i, text in enumerate(lines)]


def fold(text: str, limit: int, max_lines: int | None = None) -> list[str]:
    """Free text folded to ``limit`` columns at spaces only, shortened with ``…`` past
    ``max_lines``. A word longer than ``limit`` (an id, an email) is never cut: it gets a
    line of its own, wider than ``limit``."""
    clean = " ".join(text.split()) or "-"
    return textwrap.wrap(
        clean,
        max(8, limit),
        max_lines=max_lines,
        placeholder=" …",
        break_on_hyphens=False,
        break_long_words=False,
    ) or ["-"]


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Sequence[bool],
    limit: int,
    free: int | None = None,
    max_lines: int | None = None,
) -> list[str] | None:
    """Columns sized to their widest cell. ``free`` is the index of the one column that
    is folded to the width left; None when even then the table does not fit ``limit``."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    if free is not None:
        fixed = sum(w for i, w in enumerate(widths) if i != free) + len(GAP) * (len(widths) - 1)
        room = limit - fixed
        if room < MIN_TEXT:
            return None
        widths[free] = min(widths[free], room)
    elif sum(widths) + len(GAP) * (len(widths) - 1) > limit:
        return None

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if right[i] else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return GAP.join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    for row in rows:
        if free is None:
            out.append(line(row))
            continue
        folded = fold(row[free], widths[free], max_lines)
        out.append(line([*row[:free], folded[0], *row[free + 1 :]]))
        for more in folded[1:]:
            out.append(line(["" if i != free else more for i in range(len(row))]))
    return out


# -- Sync Status ------------------------------------------------------------------------


def _paused_line(body: dict[str, Any]) -> str | None:
    paused = body.get("paused") or []
    if not paused:
        return None
    scopes = ", ".join(f"{p['object']}/{p['direction']}" for p in paused)
    return f"Paused: {scopes}"


def lines_status(body: dict[str, Any], limit: int) -> list[str]:
    """The Sync Status table: backlog, last hour, or one object's details of either."""
    if "by_direction" in body and body.get("view") == "last_hour":
        return lines_last_hour_details(body, limit)
    if "by_direction" in body:
        return lines_details(body, limit)
    last_hour = body["view"] == "last_hour"
    if last_hour:
        window = body["window"]
        title = [
            *["Sync", "Status:", "records", "synced", "from"],
            stamp(window["start"]),
            "to",
            stamp(window["end"]),
            *["UTC,", "both", "directions"],
        ]
        headers = ["Object", "Inserts", "Updates", "Deletes", "Synced"]
    else:
        title = [*["Sync", "Status:", "backlog", "as", "of"], stamp(body["as_of"]), "UTC"]
        headers = ["Object", "Inserts", "Updates", "Deletes", "Total", "Oldest", "Trend", "Drain"]
    rows = []
    for row in body["objects"]:
        cells = [row["object"], count(row["inserts"]), count(row["updates"])]
        cells.append(count(row["deletes"]))
        if last_hour:
            cells.append(count(row["synced"]))
        else:
            oldest = row.get("oldest_queued_at")
            age = (
                datetime.fromisoformat(body["as_of"]) - datetime.fromisoformat(oldest)
                if oldest
                else None
            )
            cells += [
                count(row["total"]),
                duration(age.total_seconds()) if age is not None else "-",
                row.get("trend") or "-",
                drain_text(row),
            ]
        rows.append(cells)
    right = [False, True, True, True, True, True, False, True][: len(headers)]
    out = [*wrap_tokens(title, limit, INDENT, " "), ""]
    laid = table(headers, rows, right=right, limit=limit)
    if laid is None:
        for cells in rows:
            pairs = [f"{h.lower()} {c}" for h, c in zip(headers[1:], cells[1:], strict=True)]
            out += wrap_tokens([cells[0], *pairs], limit, INDENT)
    else:
        out += laid
    if not last_hour:
        since = body.get("trend_since")
        basis = f"the backlog at {stamp(since)} UTC" if since else "no sample old enough yet"
        notes = (
            f"Oldest: how long the oldest change has waited. Trend: against {basis}."
            " Drain: the time the backlog takes at the rate of the last minutes,"
            " each direction on its own ('paused' while paused, '\u2014' when nothing"
            " synced lately)."
        )
        out += ["", *fold(notes, limit)]
    paused = _paused_line(body)
    if paused:
        out += wrap_tokens(paused.split(" "), limit, INDENT, " ")
    return out


def lines_details(body: dict[str, Any], limit: int) -> list[str]:
    title = [f"{body['object']}:", *["waiting", "changes", "as", "of"], stamp(body["as_of"]), "UTC"]
    out = [*wrap_tokens(title, limit, INDENT, " "), ""]
    headers = ["Operation", "Waiting", "to_crm", "from_crm"]
    rows = [
        [
            op.capitalize(),
            count(body[op]["pending"]),
            count(body["by_direction"]["to_crm"][op]),
            count(body["by_direction"]["from_crm"][op]),
        ]
        for op in ("inserts", "updates", "deletes")
    ]
    laid = table(headers, rows, right=[False, True, True, True], limit=limit)
    if laid is None:
        for cells in rows:
            pairs = [f"{h} {c}" for h, c in zip(headers[1:], cells[1:], strict=True)]
            out += wrap_tokens([cells[0], *pairs], limit, INDENT)
    else:
        out += laid
    out.append("")
    for op in ("inserts", "updates", "deletes"):
        oldest = body[op]["oldest"]
        if oldest is None:
            continue
        local = oldest["record_id"] if oldest["record_id"] is not None else "-"
        tokens = [
            f"Oldest {op[:-1]}:",
            *(oldest["label"] or "(no label)").split(),
            f"(local id {local},",
            "CRM id",
            f"{oldest['crm_id'] or '-'},",
            f"{oldest['direction']})",
            "queued",
            f"{stamp(oldest['queued_at'])} UTC,",
            f"{duration(oldest['age_seconds'])} ago",
        ]
        out += wrap_tokens(tokens, limit, INDENT, " ")
    paused = _paused_line(body)
    if paused:
        out += wrap_tokens(paused.split(" "), limit, INDENT, " ")
    return out


def lines_last_hour_details(body: dict[str, Any], limit: int) -> list[str]:
    """One object's records synced in the last clock hour, per operation and direction."""
    window = body["window"]
    title = [
        f"{body['object']}:",
        *["records", "synced", "from"],
        stamp(window["start"]),
        "to",
        stamp(window["end"]),
        "UTC",
    ]
    out = [*wrap_tokens(title, limit, INDENT, " "), ""]
    headers = ["Operation", "Synced", "to_crm", "from_crm"]
    rows = [
        [
            op.capitalize(),
            count(body[op]),
            count(body["by_direction"]["to_crm"][op]),
            count(body["by_direction"]["from_crm"][op]),
        ]
        for op in ("inserts", "updates", "deletes")
    ]
    rows.append(["Total", count(body["synced"]), "", ""])
    laid = table(headers, rows, right=[False, True, True, True], limit=limit)
    if laid is None:
        for cells in rows:
            pairs = [f"{h} {c}" for h, c in zip(headers[1:], cells[1:], strict=True) if c]
            out += wrap_tokens([cells[0], *pairs], limit, INDENT)
    else:
        out += laid
    paused = _paused_line(body)
    if paused:
        out += ["", *wrap_tokens(paused.split(" "), limit, INDENT, " ")]
    return out


# -- Sync Errors ------------------------------------------------------------------------


def _record(e: dict[str, Any]) -> str:
    if e["record_id"] is None and not e["crm_id"]:
        return "(every record)"
    return e["record_label"] or str(e["record_id"] if e["record_id"] is not None else e["crm_id"])


def lines_errors(page: dict[str, Any], limit: int) -> list[str]:
    """The Sync Errors list: a table when it fits, else one block per error."""
    items = page["items"]
    title = f"Sync Errors: {len(items):,} of {page['total']:,}, newest first (times in UTC)"
    out = wrap_tokens(title.split(" "), limit, INDENT, " ")
    if not items:
        return [*out, "No errors match."]
    headers = [
        "Id",
        "Object",
        "Op",
        "Direction",
        "Code",
        "Category",
        "Field",
        "Last failed",
        "Next retry",
        "Record",
        "Message",
    ]
    rows = [
        [
            str(e["id"]),
            e["object"],
            e["operation"],
            e["direction"],
            e["error_code"],
            e["category"],
            e["field"] or "-",
            stamp(e["last_failed_at"]),
            stamp(e.get("retry_at")),
            _record(e),
            e["error_message"],
        ]
        for e in items
    ]
    message = len(headers) - 1
    # Record is free text as well, but an email is what people search by: whole, or blocks.
    laid = table(
        headers,
        rows,
        right=[True, *([False] * message)],
        limit=limit,
        free=message,
        max_lines=MESSAGE_LINES,
    )
    if laid is not None:
        return [*out, "", *laid]
    for e, cells in zip(items, rows, strict=True):
        out.append("")
        out += wrap_tokens(
            [f"#{e['id']}", e["object"], e["operation"], e["direction"], e["error_code"], cells[7]],
            limit,
            INDENT,
        )
        # The record's label, local id and CRM id as tokens: none is ever cut.
        local = e["record_id"] if e["record_id"] is not None else "-"
        record = [*cells[9].split(), f"(local id {local},", "CRM id", f"{e['crm_id'] or '-'})"]
        out += [INDENT + text for text in wrap_tokens(record, limit - len(INDENT), sep=" ")]
        kind = ["category", f"{e['category']},", "field", cells[6]]
        if e.get("retry_at"):  # the date and time one token: never split
            kind = [*kind[:-1], f"{kind[-1]},", "next", "retry", cells[8]]
        out += [INDENT + text for text in wrap_tokens(kind, limit - len(INDENT), sep=" ")]
        out += [
            INDENT + text for text in fold(e["error_message"], limit - len(INDENT), MESSAGE_LINES)
        ]
    return out


def _echo(lines: list[str]) -> None:
    typer.echo("\n".join(lines))


def print_status(body: dict[str, Any]) -> None:
    _echo(lines_status(body, width()))


def print_details(body: dict[str, Any]) -> None:
    _echo(lines_details(body, width()))


def print_errors(page: dict[str, Any]) -> None:
    _echo(lines_errors(page, width()))
