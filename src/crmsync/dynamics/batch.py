"""Encode and decode OData ``$batch`` multipart bodies. Pure functions, no I/O.

Format (execute-batch-operations-using-web-api): ``multipart/mixed`` with a
``batch_<id>`` boundary; each part is ``Content-Type: application/http`` with
``Content-Transfer-Encoding: binary`` wrapping one HTTP message; writes may be grouped in
``changeset_<id>`` parts, which are atomic. Lines must end in CRLF or Dataverse answers
``400 0x80048d19 Stream was not readable`` (web-api-client-errors), so the encoder always
writes CRLF; the decoder also accepts bare LF to be lenient with what it reads.
Both directions are here (requests and responses) so the emulator and the tests can share
one implementation of the wire format.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crmsync.numerals import whole

CRLF = "\r\n"
MAX_BATCH_REQUESTS = 1000  # execute-batch: at most 1,000 requests per batch


class BatchFormatError(ValueError):
    """A multipart body that cannot be parsed."""


@dataclass(frozen=True)
class BatchRequest:
    method: str
    url: str  # absolute, or relative to the service root (.../api/data/v9.2/)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None  # JSON-serialisable, or None
    content_id: str | None = None


@dataclass(frozen=True)
class BatchResponse:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    content_id: str | None = None

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None


def new_boundary(kind: str) -> str:
    return f"{kind}_{uuid.uuid4()}"


def _http_part(start_line: str, headers: Mapping[str, str], body: bytes, cid: str | None) -> str:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if cid is not None:
        lines.append(f"Content-ID: {cid}")
    lines += ["", start_line]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += ["", body.decode("utf-8")]
    return CRLF.join(lines)


def _request_part(req: BatchRequest) -> str:
    headers = dict(req.headers)
    payload = b""
    if req.body is not None:
        headers.setdefault("Content-Type", "application/json; type=entry")
        payload = json.dumps(req.body, separators=(",", ":")).encode("utf-8")
    return _http_part(f"{req.method} {req.url} HTTP/1.1", headers, payload, req.content_id)


def _multipart(boundary: str, parts: Iterable[str]) -> str:
    out = [f"--{boundary}{CRLF}{part}{CRLF}" for part in parts]
    return "".join(out) + f"--{boundary}--{CRLF}"


def encode_requests(
    requests: Sequence[BatchRequest],
    *,
    changesets: bool = False,
    atomic: bool = False,
    boundary: str | None = None,
) -> tuple[str, bytes]:
    """``(content_type, body)`` for a batch.

    ``changesets=False``: every request is an independent part (with
    ``Prefer: odata.continue-on-error`` a failure does not stop the rest).
    ``changesets=True``: each write in its own changeset. ``atomic=True``: all writes in
    one changeset, all or nothing.
    """
    if len(requests) > MAX_BATCH_REQUESTS:
        raise ValueError(f"a batch holds at most {MAX_BATCH_REQUESTS} requests")
    boundary = boundary or new_boundary("batch")
    if atomic:
        groups: list[list[BatchRequest]] = [list(requests)] if requests else []
    elif changesets:
        groups = [[r] for r in requests]
    else:
        groups = []
    parts: list[str] = []
    if groups:
        for group in groups:
            cs = new_boundary("changeset")
            inner = [
                _request_part(r if r.content_id else _with_cid(r, str(i)))
                for i, r in enumerate(group, 1)
            ]
            body = _multipart(cs, inner)
            parts.append(f"Content-Type: multipart/mixed; boundary={cs}{CRLF}{CRLF}{body}")
    else:
        parts = [_request_part(r) for r in requests]
    content_type = f"multipart/mixed; boundary={boundary}"
    return content_type, _multipart(boundary, parts).encode("utf-8")


def _with_cid(req: BatchRequest, cid: str) -> BatchRequest:
    return BatchRequest(req.method, req.url, req.headers, req.body, cid)


def encode_responses(
    responses: Sequence[BatchResponse | Sequence[BatchResponse]], *, boundary: str | None = None
) -> tuple[str, bytes]:
    """Encode a batch response; a nested sequence becomes one changeset response."""
    boundary = boundary or new_boundary("batchresponse")
    parts: list[str] = []
    for item in responses:
        if isinstance(item, BatchResponse):
            parts.append(_response_part(item))
        else:
            cs = new_boundary("changesetresponse")
            body = _multipart(cs, [_response_part(r) for r in item])
            parts.append(f"Content-Type: multipart/mixed; boundary={cs}{CRLF}{CRLF}{body}")
    return f"multipart/mixed; boundary={boundary}", _multipart(boundary, parts).encode("utf-8")


def _response_part(resp: BatchResponse) -> str:
    reason = _REASONS.get(resp.status, "")
    start = f"HTTP/1.1 {resp.status} {reason}".rstrip()
    return _http_part(start, resp.headers, resp.body, resp.content_id)


_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    412: "Precondition Failed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


# --- decoding -------------------------------------------------------------------------


def boundary_of(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary" and value:
            return value.strip().strip('"')
    raise BatchFormatError(f"no boundary in content type {content_type!r}")


def _split(body: bytes, boundary: str) -> list[bytes]:
    delim = b"--" + boundary.encode("ascii")
    chunks = body.split(delim)
    if len(chunks) < 2:
        raise BatchFormatError("boundary not found in body")
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # closing delimiter
        parts.append(_strip_line_end(chunk, leading=True))
    else:
        raise BatchFormatError("missing closing boundary")
    return parts


def _strip_line_end(chunk: bytes, *, leading: bool = False) -> bytes:
    if leading:
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        elif chunk.startswith(b"\n"):
            chunk = chunk[1:]
    # the CRLF before a delimiter belongs to the delimiter (RFC 2046 section 5.1.1)
    if chunk.endswith(b"\r\n"):
        return chunk[:-2]
    return chunk[:-1] if chunk.endswith(b"\n") else chunk


def _head_body(block: bytes) -> tuple[list[str], bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, rest = block.partition(sep)
        if found:
            return head.decode("utf-8").splitlines(), rest
    return block.decode("utf-8").splitlines(), b""


def _headers(lines: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise BatchFormatError(f"malformed header line {line!r}")
        out[name.strip().lower()] = value.strip()
    return out


def _parts(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes, bool]]:
    """Flatten a batch into ``(part headers, http message, inside a changeset)``."""
    out = []
    for part in _split(body, boundary_of(content_type)):
        head, inner = _head_body(part)
        headers = _headers(head)
        ctype = headers.get("content-type", "")
        if ctype.lower().startswith("multipart/mixed"):
            for sub in _split(inner, boundary_of(ctype)):
                sub_head, sub_inner = _head_body(sub)
                out.append((_headers(sub_head), sub_inner, True))
        else:
            out.append((headers, inner, False))
    return out


def decode_responses(content_type: str, body: bytes) -> list[BatchResponse]:
    """Every response in a batch response body, in order, changesets flattened."""
    responses = []
    for part_headers, message, _ in _parts(content_type, body):
        head, payload = _head_body(message)
        if not head:
            raise BatchFormatError("empty response part")
        fields = head[0].split(" ", 2)
        code = whole(fields[1]) if len(fields) >= 2 else None
        if code is None:
            raise BatchFormatError(f"bad status line {head[0]!r}")
        responses.append(
            BatchResponse(
                status=code,
                headers=_headers(head[1:]),
                body=payload.strip(b"\r\n"),
                content_id=part_headers.get("content-id"),
            )
        )
    return responses


def decode_requests(content_type: str, body: bytes) -> list[tuple[BatchRequest, bool]]:
    """Every request in a batch request body with whether it sits in a changeset."""
    requests = []
    for part_headers, message, in_changeset in _parts(content_type, body):
        head, payload = _head_body(message)
        if not head:
            raise BatchFormatError("empty request part")
        fields = head[0].split(" ")
        if len(fields) != 3:
            raise BatchFormatError(f"bad request line {head[0]!r}")
        payload = payload.strip(b"\r\n")
        try:
            data = json.loads(payload) if payload.strip() else None
        except ValueError as exc:
            raise BatchFormatError("request body is not JSON") from exc
        req = BatchRequest(
            method=fields[0],
            url=fields[1],
            headers=_headers(head[1:]),
            body=data,
            content_id=part_headers.get("content-id"),
        )
        requests.append((req, in_changeset))
    return requests
