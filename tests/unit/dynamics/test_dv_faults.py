"""classify(): one row per status/code the reference names."""

from __future__ import annotations

import json

import httpx
import pytest

from crmsync.dynamics.faults import (
    DeltaTokenExpired,
    PreconditionFailed,
    Throttled,
    TokenRejected,
    UnknownResource,
    classify,
    error_fields,
    from_transport_error,
    parse_retry_after,
)
from crmsync.errors import Fatal, RecordRejected, Retriable


def body(code: str, message: str = "msg") -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(
    ("status", "code", "family"),
    [
        (429, "0x80072322", Throttled),
        (429, "0x80072321", Throttled),
        (429, "0x80072326", Throttled),
        (429, "", Throttled),
        (500, "", Retriable),
        (502, "", Retriable),
        (503, "", Retriable),
        (504, "", Retriable),
        (408, "", Retriable),
        (500, "0x80040333", RecordRejected),  # duplicate detection comes back as 500
        (400, "0x80044331", RecordRejected),
        (403, "0x80040220", RecordRejected),
        (403, "0x80048306", RecordRejected),
        (404, "0x80040217", RecordRejected),
        (404, "", RecordRejected),
        (400, "0x80048d19", RecordRejected),
        (400, "0x0", RecordRejected),
        (400, "", RecordRejected),
        (405, "", RecordRejected),
        (412, "", PreconditionFailed),
        (412, "0x80060892", RecordRejected),
        (401, "", TokenRejected),
        (403, "", Fatal),
        (404, "0x8006088a", UnknownResource),
    ],
)
def test_classify_table(status: int, code: str, family: type[Exception]) -> None:
    err = classify(status, body(code), {})
    assert isinstance(err, family)
    if isinstance(err, RecordRejected):
        assert err.code == code
        assert err.message == "msg"
        assert err.status == status


def test_throttle_families() -> None:
    assert issubclass(Throttled, Retriable)
    assert issubclass(TokenRejected, Fatal)
    assert issubclass(PreconditionFailed, RecordRejected)
    # Fatal to a push; the pull reports it per object with Dynamics' code and message.
    assert issubclass(UnknownResource, Fatal)
    err = classify(404, body("0x8006088a", "Resource not found for the segment 'x'."), {})
    assert isinstance(err, UnknownResource)
    assert (err.code, err.message, err.status) == (
        "0x8006088a",
        "Resource not found for the segment 'x'.",
        404,
    )
    assert str(err) == "unknown Dataverse resource: Resource not found for the segment 'x'."


def test_code_and_message_kept_verbatim() -> None:
    msg = (
        "A validation error occurred.  The length of the 'subject' attribute of the 'task' "
        "entity exceeded the maximum allowed length of '200'."
    )
    err = classify(400, body("0x80044331", msg), {})
    assert isinstance(err, RecordRejected)
    assert (err.code, err.message) == ("0x80044331", msg)


def test_duplicate_detection_500_is_rejection_not_retry() -> None:
    err = classify(500, body("0x80040333", "A record was not created or updated"), {})
    assert isinstance(err, RecordRejected)
    assert not isinstance(err, Retriable)


def test_retry_after_honoured_and_defaulted() -> None:
    err = classify(429, body("0x80072322"), {"Retry-After": "17"})
    assert isinstance(err, Throttled)
    assert err.retry_after == 17
    assert classify(429, b"", {}).retry_after == 5.0  # type: ignore[attr-defined]
    five = classify(503, b"", {"retry-after": "2"})
    assert isinstance(five, Retriable)
    assert five.retry_after == 2


def test_service_protection_code_wins_over_status() -> None:
    assert isinstance(classify(503, body("0x80072326"), {}), Throttled)


def test_expired_delta_token() -> None:
    text = "Version stamp associated with the client has expired. Please perform a full sync."
    assert isinstance(classify(400, body("0x80044352", text), {}), DeltaTokenExpired)
    assert isinstance(classify(500, body("", text), {}), DeltaTokenExpired)


def test_error_fields_tolerates_garbage() -> None:
    assert error_fields(b"") == ("", "")
    assert error_fields(b"<html>oops</html>") == ("", "<html>oops</html>")
    assert error_fields({"error": "x"}) == ("", "")
    assert error_fields(b"[1]") == ("", "")
    assert isinstance(classify(502, b"<html>bad gateway</html>", {}), Retriable)


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("  ") is None
    assert parse_retry_after("3") == 3
    assert parse_retry_after("-3") == 0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


@pytest.mark.parametrize(
    ("exc", "family"),
    [
        (httpx.ReadTimeout("t"), Retriable),
        (httpx.ConnectTimeout("t"), Retriable),
        (httpx.ConnectError("c"), Retriable),
        (httpx.ReadError("r"), Retriable),
        (httpx.WriteError("w"), Retriable),
        (httpx.RemoteProtocolError("cut"), Retriable),
        (httpx.UnsupportedProtocol("ftp"), Fatal),
    ],
)
def test_transport_errors(exc: httpx.HTTPError, family: type[Exception]) -> None:
    assert isinstance(from_transport_error(exc), family)
