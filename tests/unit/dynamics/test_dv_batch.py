"""$batch wire format: encode/decode both directions, CRLF, changesets, continue-on-error."""

from __future__ import annotations

import json

import pytest

from crmsync.dynamics.batch import (
    BatchFormatError,
    BatchRequest,
    BatchResponse,
    boundary_of,
    decode_requests,
    decode_responses,
    encode_requests,
    encode_responses,
)

REQS = [
    BatchRequest("POST", "leads", {"MSCRM.SuppressDuplicateDetection": "false"}, {"lastname": "A"}),
    BatchRequest(
        "PATCH", "leads(00000000-0000-0000-0000-000000000001)", {"If-Match": "*"}, {"x": 1}
    ),
    BatchRequest("DELETE", "leads(00000000-0000-0000-0000-000000000002)"),
]


def test_encode_uses_crlf_only_and_closes() -> None:
    ctype, body = encode_requests(REQS, boundary="batch_abc")
    assert ctype == "multipart/mixed; boundary=batch_abc"
    text = body.decode()
    assert "\n" not in text.replace("\r\n", "")
    assert text.startswith("--batch_abc\r\n")
    assert text.endswith("--batch_abc--\r\n")
    assert "Content-Transfer-Encoding: binary" in text
    assert "POST leads HTTP/1.1\r\n" in text
    assert "Content-Type: application/json; type=entry" in text


@pytest.mark.parametrize(("changesets", "atomic"), [(False, False), (True, False), (False, True)])
def test_request_round_trip(changesets: bool, atomic: bool) -> None:
    ctype, body = encode_requests(REQS, changesets=changesets, atomic=atomic)
    decoded = decode_requests(ctype, body)
    assert [r.method for r, _ in decoded] == ["POST", "PATCH", "DELETE"]
    assert [r.url for r, _ in decoded] == [r.url for r in REQS]
    assert [r.body for r, _ in decoded] == [{"lastname": "A"}, {"x": 1}, None]
    assert decoded[0][0].headers["mscrm.suppressduplicatedetection"] == "false"
    assert all(inside == (changesets or atomic) for _, inside in decoded)
    if changesets or atomic:
        assert all(r.content_id for r, _ in decoded)


def test_response_round_trip_with_changeset() -> None:
    ok = BatchResponse(
        204, {"OData-EntityId": "https://x/api/data/v9.2/leads(abc)"}, b"", content_id="1"
    )
    bad = BatchResponse(
        400,
        {"Content-Type": "application/json; odata.metadata=minimal"},
        json.dumps({"error": {"code": "0x80044331", "message": "too long"}}).encode(),
    )
    ctype, body = encode_responses([ok, [ok], bad])
    out = decode_responses(ctype, body)
    assert [r.status for r in out] == [204, 204, 400]
    assert out[0].headers["odata-entityid"].endswith("leads(abc)")
    assert out[1].content_id == "1"
    assert out[2].json() == {"error": {"code": "0x80044331", "message": "too long"}}


# A continue-on-error response as the docs show it (execute-batch-operations-using-web-api).
DOC_RESPONSE = (
    "--batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "\r\n"
    "HTTP/1.1 204 No Content\r\n"
    "OData-Version: 4.0\r\n"
    "Location: [Org]/api/data/v9.2/tasks(aed2ae8b-3c5a-ed11-9561-002248080e7f)\r\n"
    "OData-EntityId: [Org]/api/data/v9.2/tasks(aed2ae8b-3c5a-ed11-9561-002248080e7f)\r\n"
    "\r\n"
    "\r\n"
    "--batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "\r\n"
    "HTTP/1.1 400 Bad Request\r\n"
    "REQ_ID: 5c0b1bf3-7da2-4bb8-8ab5-8e4e0d5b2a9b\r\n"
    "Content-Type: application/json; odata.metadata=minimal\r\n"
    "OData-Version: 4.0\r\n"
    "\r\n"
    '{"error":{"code":"0x80044331","message":"A validation error occurred.  The length of '
    "the 'subject' attribute of the 'task' entity exceeded the maximum allowed length of "
    "'200'.\"}}\r\n"
    "--batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "\r\n"
    "HTTP/1.1 204 No Content\r\n"
    "OData-EntityId: [Org]/api/data/v9.2/tasks(b0d2ae8b-3c5a-ed11-9561-002248080e7f)\r\n"
    "\r\n"
    "\r\n"
    "--batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f--\r\n"
)


def test_decode_continue_on_error_mixed() -> None:
    ctype = 'multipart/mixed; boundary="batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f"'
    out = decode_responses(ctype, DOC_RESPONSE.encode())
    assert [r.status for r in out] == [204, 400, 204]
    assert out[1].json()["error"]["code"] == "0x80044331"
    assert out[2].headers["odata-entityid"].endswith("(b0d2ae8b-3c5a-ed11-9561-002248080e7f)")


def test_decode_accepts_bare_lf() -> None:
    ctype = "multipart/mixed; boundary=batchresponse_c1bd45c1-dd81-470d-b897-e965846aad2f"
    out = decode_responses(ctype, DOC_RESPONSE.replace("\r\n", "\n").encode())
    assert [r.status for r in out] == [204, 400, 204]


def test_format_errors() -> None:
    with pytest.raises(BatchFormatError):
        boundary_of("multipart/mixed")
    with pytest.raises(BatchFormatError):
        decode_responses("multipart/mixed; boundary=b", b"nothing here")
    with pytest.raises(BatchFormatError):
        decode_responses("multipart/mixed; boundary=b", b"--b\r\nx: y\r\n\r\nnot http\r\n--b--")
    with pytest.raises(ValueError):
        encode_requests([REQS[2]] * 1001)


@pytest.mark.parametrize("code", ["\u00b2\u00b9\u2070", "\u0662\u0660\u0664", "2_04", "+204"])
def test_a_status_code_not_in_ascii_digits_is_a_format_error(code: str) -> None:
    """``str.isdigit()`` took "²¹⁰", which ``int()`` then refused with a ValueError."""
    part = f"--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 {code} No Content\r\n\r\n--b--"
    with pytest.raises(BatchFormatError, match="bad status line"):
        decode_responses("multipart/mixed; boundary=b", part.encode())
