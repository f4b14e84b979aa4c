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
from crmsync.errors import Fatal, ObjectUnusable, RecordRejected, Retriable, StaleRecord


def body(code: str, message: str = "msg") -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


FAMILIES = (Retriable, RecordRejected, StaleRecord, ObjectUnusable, Fatal)


@pytest.mark.parametrize(
    ("status", "code", "kind", "family"),
    [
        (429, "0x80072322", Throttled, Retriable),
        (429, "0x80072321", Throttled, Retriable),
        (429, "0x80072326", Throttled, Retriable),
        (429, "", Throttled, Retriable),
        (500, "", Retriable, Retriable),
        (502, "", Retriable, Retriable),
        (503, "", Retriable, Retriable),
        (504, "", Retriable, Retriable),
        (408, "", Retriable, Retriable),
        (500, "0x80040333", RecordRejected, RecordRejected),  # duplicate detection: a 500
        (400, "0x80044331", RecordRejected, RecordRejected),
        (403, "0x80040220", RecordRejected, RecordRejected),
        (403, "0x80048306", RecordRejected, RecordRejected),
        (404, "0x80040217", RecordRejected, RecordRejected),
        (404, "", RecordRejected, RecordRejected),
        (400, "0x80048d19", RecordRejected, RecordRejected),
        (400, "0x0", RecordRejected, RecordRejected),
        (400, "", RecordRejected, RecordRejected),
        (405, "", RecordRejected, RecordRejected),
        (412, "", PreconditionFailed, StaleRecord),
        (412, "0x80060882", PreconditionFailed, StaleRecord),
        (412, "0x80060892", RecordRejected, RecordRejected),  # the code wins
        (401, "", TokenRejected, Fatal),
        (403, "", Fatal, Fatal),
        (404, "0x8006088a", UnknownResource, ObjectUnusable),
        (418, "", RecordRejected, RecordRejected),
    ],
)
def test_classify_table(
    status: int, code: str, kind: type[Exception], family: type[Exception]
) -> None:
    err = classify(status, body(code), {})
    assert isinstance(err, kind)
    # Exactly one family: a handler catching one never also gets another's answers.
    assert [f for f in FAMILIES if isinstance(err, f)] == [family]
    if isinstance(err, RecordRejected | StaleRecord | ObjectUnusable):
        assert err.code == code
        assert err.message == "msg"
        assert err.status == status


def test_transport_failures_are_transient_or_fatal() -> None:
    cut = from_transport_error(httpx.ConnectError("refused"))
    assert [f for f in FAMILIES if isinstance(cut, f)] == [Retriable]
    odd = from_transport_error(httpx.UnsupportedProtocol("ftp"))
    assert [f for f in FAMILIES if isinstance(odd, f)] == [Fatal]


def test_the_families_are_disjoint() -> None:
    for one in FAMILIES:
        for other in FAMILIES:
            assert one is other or not issubclass(one, other), (one, other)


def test_an_unknown_resource_keeps_dynamics_code_and_message() -> None:
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
