"""Map Dataverse responses and transport failures onto crmsync's error families.

Decisions only, no I/O: ``classify`` takes a status, a body and headers and returns the
exception the caller should act on, in ``crmsync.errors``' families: ``Retriable``
(429 with ``Retry-After``, 5xx, timeouts, cut connections), ``RecordRejected`` (this
record: validation, duplicate, privilege, not found; code and message verbatim),
``StaleRecord`` (412), ``ObjectUnusable`` (an entity set Dataverse lacks), ``Fatal``.

Dataverse's error body is ``{"error": {"code": "<hex or empty>", "message": "..."}}``;
the code "is not related to the http status code and is frequently empty"
(compose-http-requests-handle-errors), so the code wins over the status when we know it.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from collections.abc import Mapping
from typing import Any

import httpx

from crmsync.errors import (
    CrmsyncError,
    Fatal,
    ObjectUnusable,
    RecordRejected,
    Retriable,
    StaleRecord,
)

# api-limits.md: requests, execution time and concurrent requests exceeded.
THROTTLE_CODES = frozenset({"0x80072322", "0x80072321", "0x80072326"})

# Codes that reject one record whatever the HTTP status. Duplicate detection comes back as
# a 500 (manage-duplicate-detection-create-update), so the status alone would say "retry".
REJECT_CODES = frozenset(
    {
        "0x80040333",  # duplicate detection rule hit
        "0x80040237",  # duplicate key
        "0x80060892",  # alternate key violated
        "0x80044331",  # validation error (e.g. string too long)
        "0x8004431a",  # choice value out of range
        "0x80040220",  # missing privilege
        "0x80048306",  # no access right on the record
        "0x80040217",  # record not found
        "0x80060891",  # not found by alternate key
        "0x80040265",  # plug-in aborted the operation
        "0x80048d19",  # payload error
    }
)

# 404 for an unknown entity set: a mapping/configuration mistake that every record hits.
UNKNOWN_RESOURCE_CODE = "0x8006088a"

# Fault text for an expired change-tracking token (MicrosoftDocs/powerapps-docs#3845).
DELTA_EXPIRED_TEXT = "version stamp associated with the client has expired"

DEFAULT_RETRY_AFTER = 5.0


class Throttled(Retriable):
    """Service protection said wait (429): every request on this credential should wait."""


class TokenRejected(Fatal):
    """401 even with a freshly issued token: the credentials cannot reach this environment."""


class PreconditionFailed(StaleRecord):
    """412: the record's version (If-Match) or existence (If-None-Match) did not match."""


class UnknownResource(ObjectUnusable):
    """404 for an entity set Dataverse does not have: a mapping mistake that every request
    of the object hits. A pull reports it as that object's error and goes on with the
    others; a push stops (``Pusher.push_batch``), as every write of the object would."""

    def __init__(self, code: str, message: str, *, status: int = 404):
        super().__init__(code, message, status=status)

    def __str__(self) -> str:
        return f"unknown Dataverse resource: {self.message}"


class MissingAttribute(ObjectUnusable):
    """400 naming an attribute the table does not have: Dynamics no longer matches the
    mapping (a column deleted or renamed), so every write or read of the object fails
    alike; ``attribute`` is the one it named."""

    def __init__(self, code: str, message: str, attribute: str, *, status: int = 400):
        super().__init__(code, message, status=status)
        self.attribute = attribute


# How Dataverse names an attribute a table does not have: in $select or $filter ("Could
# not find a property named"), in a request body (the OData reader's "does not exist
# on type", and the platform's "Invalid property ... was found in entity").
_MISSING_ATTRIBUTE = re.compile(
    r"Could not find a property named '([^']+)'"
    r"|The property '([^']+)' does not exist on type"
    r"|Invalid property '([^']+)' was found in entity"
)


class DeltaTokenExpired(CrmsyncError):
    """The change-tracking delta link is too old; the caller must run a full sync."""


def error_fields(body: bytes | str | Mapping[str, Any] | None) -> tuple[str, str]:
    """Dataverse's ``(code, message)`` from an error body, or ``("", "")``."""
    data: Any = body
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body) if body else None
        except ValueError:
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            return "", text.strip()[:2000]
    if not isinstance(data, Mapping):
        return "", ""
    err = data.get("error")
    if not isinstance(err, Mapping):
        return "", ""
    code, message = err.get("code"), err.get("message")
    return (str(code) if code else "", str(message) if message else "")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def classify(
    status: int,
    body: bytes | str | Mapping[str, Any] | None,
    headers: Mapping[str, str] | None = None,
) -> CrmsyncError:
    """The exception for one failed Dataverse response (status >= 400)."""
    code, message = error_fields(body)
    lower = {k.lower(): v for k, v in (headers or {}).items()}
    code_key = code.lower()
    if DELTA_EXPIRED_TEXT in message.lower():
        return DeltaTokenExpired(message)
    if status == 429 or code_key in THROTTLE_CODES:
        wait = parse_retry_after(lower.get("retry-after"))
        return Throttled(
            _describe(status, code, message),
            retry_after=DEFAULT_RETRY_AFTER if wait is None else wait,
            status=status,
        )
    # Before the codes: a payload error (0x80048d19) naming a missing attribute is about
    # the mapping, not about this record.
    missing = _MISSING_ATTRIBUTE.search(message) if status == 400 else None
    if missing is not None:
        attribute = next(g for g in missing.groups() if g)
        return MissingAttribute(code, message, attribute, status=status)
    if code_key in REJECT_CODES:
        return RecordRejected(code, message, status=status)
    if status == 401:
        return TokenRejected(f"Dynamics refused the access token (HTTP 401) {message}".strip())
    if status == 403:
        return Fatal(f"Dynamics denied access (HTTP 403): {_describe(status, code, message)}")
    if status == 404 and code_key == UNKNOWN_RESOURCE_CODE:
        return UnknownResource(code, message, status=status)
    if status == 412:
        return PreconditionFailed(code, message, status=status)
    if status in (408, 425) or status >= 500:
        wait = parse_retry_after(lower.get("retry-after"))
        return Retriable(_describe(status, code, message), retry_after=wait, status=status)
    if 400 <= status < 500:
        return RecordRejected(code, message or f"HTTP {status}", status=status)
    return Fatal(f"unexpected HTTP status {status} from Dynamics")


def from_transport_error(exc: httpx.HTTPError) -> CrmsyncError:
    """Map an httpx failure. A cut connection after sending is ambiguous: the write may
    have been applied, so callers must only retry idempotent forms (upsert by id)."""
    if isinstance(exc, httpx.TimeoutException):
        return Retriable(f"timed out talking to Dynamics ({type(exc).__name__})")
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError | httpx.ProxyError):
        return Retriable(f"connection to Dynamics failed ({type(exc).__name__})")
    return Fatal(f"cannot talk to Dynamics ({type(exc).__name__}): {exc}")


def _describe(status: int, code: str, message: str) -> str:
    parts = [f"HTTP {status}"]
    if code:
        parts.append(code)
    if message:
        parts.append(message)
    return ": ".join(parts)
