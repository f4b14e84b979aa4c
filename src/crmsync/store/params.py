"""User input for the store's list queries, checked once for the API and the CLI.

Every list that operators page through (Sync Errors, the conflict journal) takes the
same kinds of parameters: choices from a fixed set, free text, ISO 8601 times, a page
size, and an opaque cursor. Each check raises ``ValidationFailed`` naming the parameter,
which the API turns into a 422 and the CLI into a message about its ``--option``.

Pages are newest first on a (timestamp, id) pair and paged by keyset: the cursor is the
last row's pair, so rows added while a client pages land before its cursor and pages
never skip or repeat a row. Each list tags its cursors with its own prefix, so a cursor
of one list is refused by another instead of being misread.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import ColumnElement

from crmsync.errors import ValidationFailed

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_TEXT = 1000
MAX_ID = 2**63 - 1  # BIGINT on PostgreSQL, INTEGER on SQLite: both signed 64-bit
# The times a query may name. Far from datetime's own limits (years 1 and 9999), so a
# window derived from one (an hour, a day, a zone's local clock) never overflows.
MIN_TIME = datetime(1900, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(3000, 1, 1, tzinfo=UTC)
OUT_OF_RANGE = "is out of range (1900-01-01 to 2999-12-31)"


def in_range(field: str, value: datetime) -> datetime:
    """An aware ``value`` as UTC, refused unless between ``MIN_TIME`` and ``MAX_TIME``."""
    try:
        utc = value.astimezone(ZoneInfo("UTC"))
    except (OverflowError, ValueError):
        raise ValidationFailed(field, OUT_OF_RANGE) from None
    if not MIN_TIME <= utc < MAX_TIME:
        raise ValidationFailed(field, OUT_OF_RANGE)
    return utc


def parse_timestamp(field: str, value: str | None) -> datetime | None:
    """An ISO 8601 timestamp with an offset (``Z`` accepted), as aware UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationFailed(field, "is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        raise ValidationFailed(field, "needs a UTC offset, e.g. 2026-11-25T13:00:00Z")
    return in_range(field, parsed)


def timestamp(field: str, value: str | datetime | None) -> datetime | None:
    """``parse_timestamp`` for values that may already be parsed (library callers)."""
    return value if isinstance(value, datetime) or value is None else parse_timestamp(field, value)


def check_choice(field: str, value: str | None, choices: Iterable[str]) -> str | None:
    allowed = tuple(choices)
    if value is not None and value not in allowed:
        raise ValidationFailed(field, f"unknown value {value!r}; one of {', '.join(allowed)}")
    return value


def check_text(field: str, value: str | None, max_length: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    if "\0" in value:  # PostgreSQL text cannot hold NUL: refuse it rather than fail later
        raise ValidationFailed(field, "must not contain NUL characters")
    if len(value) > max_length:
        raise ValidationFailed(field, f"is longer than {max_length} characters")
    try:  # a JSON body may carry a lone surrogate ("\ud800"), which no database stores
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationFailed(field, "is not valid Unicode text") from None
    return value


def check_id(field: str, value: int | None) -> int | None:
    if value is not None and not 1 <= value <= MAX_ID:
        raise ValidationFailed(field, f"must be between 1 and {MAX_ID}")
    return value


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed("limit", f"must be between 1 and {MAX_LIMIT}")
    return limit


def check_window(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and until < since:
        raise ValidationFailed("until", "is before since")


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def like_pattern(q: str) -> str:
    """A LIKE pattern matching ``q`` anywhere, with ``\\`` escaping LIKE's wildcards."""
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# -- keyset cursors ---------------------------------------------------------------------


def encode_cursor(prefix: str, at: datetime, row_id: int) -> str:
    raw = f"{prefix}{at.isoformat()}|{row_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(prefix: str, cursor: str) -> tuple[datetime, int]:
    """The (timestamp, id) of a cursor made by ``encode_cursor`` with the same prefix."""
    bad = ValidationFailed("cursor", "is not a cursor this API returned")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        stamp, _, digits = raw.removeprefix(prefix).partition("|")
        at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeError, ValueError):
        raise bad from None
    if not raw.startswith(prefix) or not digits.isdecimal() or int(digits) > MAX_ID:
        raise bad
    if at.tzinfo is None:
        raise bad
    try:  # a hand-edited time near year 1 or 9999 would overflow in the query
        at = in_range("cursor", at)
    except ValidationFailed:
        raise bad from None
    return at, int(digits)


def before_cursor(
    at_column: sa.ColumnElement[datetime],
    id_column: sa.ColumnElement[int],
    at: datetime,
    row_id: int,
) -> ColumnElement[bool]:
    """Rows after the cursor in newest-first (timestamp desc, id desc) order."""
    return sa.or_(at_column < at, sa.and_(at_column == at, id_column < row_id))
