"""``POST $batch``: multipart/mixed requests, atomic changesets, ``Content-ID`` references.

Rules from ``webapi/execute-batch-operations-using-web-api.md`` (reference section 4):
CRLF line endings (else a part with a body answers ``0x80048d19 ... Stream was not readable``
unless the body ends with two bare line feeds, the support article's workaround), at most 1,000
requests, changesets all-or-nothing and without GETs, ``$n`` refers to the record a
part with ``Content-ID: n`` created earlier in the same changeset, and the batch stops
at the first failure unless ``Prefer: odata.continue-on-error``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from crmsync.emulator import faults
from crmsync.emulator.api import Api
from crmsync.emulator.http import Call, Reply, split_api_path
from crmsync.emulator.odata import parse_prefer

MAX_REQUESTS = 1000
_CRLF = "\r\n"
_BOUNDARY_RE = re.compile(r'boundary="?([^";,\s]+)"?', re.IGNORECASE)
_REF_RE = re.compile(r"^\$([0-9]+)(.*)$")


@dataclass
class Part:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    content_id: str | None = None
    unreadable: bool = False  # sent with bare-LF line endings (see ``parse``)


@dataclass
class Changeset:
    parts: list[Part] = field(default_factory=list)


def boundary_of(content_type: str) -> str | None:
    m = _BOUNDARY_RE.search(content_type)
    return m.group(1) if m else None


def _split(text: str, boundary: str) -> list[str]:
    delimiter = f"--{boundary}"
    chunks = text.split(delimiter)
    if len(chunks) < 2 or not chunks[-1].startswith("--"):
        raise faults.bad_payload(
            "", "System.ArgumentException: the multipart body has no closing boundary."
        )
    return [c[len(_CRLF) :] if c.startswith(_CRLF) else c for c in chunks[1:-1]]


def _headers(block: str) -> dict[str, str]:
    out = {}
    for line in block.split(_CRLF):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def request_line(line: str) -> tuple[str, str]:
    """``GET leads?$filter=lastname eq 'x' HTTP/1.1`` -> ("GET", "leads?$filter=...").

    Clients put the URL unencoded, spaces included, so the URL is everything between
    the method and the last `` HTTP/1.1`` (RFC 9112 section 3 forbids spaces; OData
    clients send them anyway and Dataverse accepts them).
    """
    method, sep, rest = line.strip().partition(" ")
    url, sep2, version = rest.rpartition(" ")
    if not sep or not sep2 or not version.upper().startswith("HTTP/") or not url.strip():
        raise faults.bad_payload(
            "", "System.ArgumentException: a batch part lacks its request line."
        )
    return method.upper(), url.strip()


def _parse_request(chunk: str) -> Part:
    mime, _, http = chunk.partition(_CRLF + _CRLF)
    mime_headers = _headers(mime)
    head, _, body = http.partition(_CRLF + _CRLF)
    lines = head.split(_CRLF)
    method, url = request_line(lines[0])
    if body.endswith(_CRLF):
        body = body[: -len(_CRLF)]
    return Part(
        method=method,
        url=url,
        headers=_headers(_CRLF.join(lines[1:])),
        body=body.encode(),
        content_id=mime_headers.get("content-id"),
    )


def parse(body: bytes, content_type: str) -> list[Part | Changeset]:
    boundary = boundary_of(content_type)
    if boundary is None or not content_type.lower().startswith("multipart/mixed"):
        raise faults.bad_payload(
            "",
            "System.ArgumentException: $batch needs Content-Type multipart/mixed with a boundary.",
        )
    text = body.decode("utf-8", errors="replace")
    unreadable = False
    if re.search(r"(?<!\r)\n", text):
        # Line endings other than CRLF (web-api-client-errors.md): the parts' bodies
        # can't be read ("Stream was not readable"), unless the body ends with two
        # non-CRLF line endings, the workaround the article gives. Parts are still
        # split, so each answers on its own, as in the article's example response.
        tail = text.rstrip(" \t")
        unreadable = not (tail.endswith("\n\n") and not tail.endswith("\r\n\n"))
        text = text.replace("\r\n", "\n").replace("\n", _CRLF)
    items: list[Part | Changeset] = []
    for chunk in _split(text, boundary):
        mime = _headers(chunk.partition(_CRLF + _CRLF)[0])
        inner = boundary_of(mime.get("content-type", ""))
        if inner and mime.get("content-type", "").lower().startswith("multipart/mixed"):
            rest = chunk.partition(_CRLF + _CRLF)[2]
            changeset = Changeset([_parse_request(c) for c in _split(rest, inner)])
            for part in changeset.parts:
                if part.method == "GET":
                    raise faults.bad_payload(
                        "", "System.ArgumentException: GET requests are not allowed in a changeset."
                    )
            items.append(changeset)
        else:
            items.append(_parse_request(chunk))
    if unreadable:
        for item in items:
            for part in item.parts if isinstance(item, Changeset) else [item]:
                part.unreadable = bool(part.body.strip())
    total = sum(len(i.parts) if isinstance(i, Changeset) else 1 for i in items)
    if total > MAX_REQUESTS:
        raise faults.bad_query(
            f"The number of requests in the batch exceeds the maximum of {MAX_REQUESTS}."
        )
    return items


class BatchRunner:
    def __init__(self, api: Api) -> None:
        self.api = api

    def run(self, call: Call) -> Reply:
        self.api.run_jobs()
        items = parse(call.body, call.header("content-type") or "")
        keep_going = parse_prefer(call.header("prefer")).continue_on_error
        boundary = f"batchresponse_{uuid.uuid4()}"
        out: list[str] = []
        status = 200
        records = 0
        ran: list[tuple[Call, Reply]] = []
        for item in items:
            if isinstance(item, Changeset):
                replies = self._changeset(item, call, ran)
                inner = f"changesetresponse_{uuid.uuid4()}"
                block = "".join(f"--{inner}{_CRLF}{_render(r, cid)}" for r, cid in replies)
                out.append(
                    f"--{boundary}{_CRLF}Content-Type: multipart/mixed; "
                    f"boundary={inner}{_CRLF}{_CRLF}"
                    f"{block}--{inner}--{_CRLF}"
                )
                failed = next((r for r, _ in replies if r.status >= 400), None)
            else:
                reply = self._one(item, call, {}, ran)
                out.append(f"--{boundary}{_CRLF}{_render(reply, None)}")
                failed = reply if reply.status >= 400 else None
                replies = [(reply, None)]
            records += sum(r.records for r, _ in replies)
            if failed is not None and not keep_going:
                status = failed.status
                break
        body = "".join(out) + f"--{boundary}--{_CRLF}"
        head = {"Content-Type": f"multipart/mixed; boundary={boundary}", "OData-Version": "4.0"}
        return Reply(status, head, body.encode(), records, parts=ran)

    def _changeset(
        self, changeset: Changeset, call: Call, ran: list[tuple[Call, Reply]]
    ) -> list[tuple[Reply, str | None]]:
        store = self.api.store
        store.begin()
        refs: dict[str, str] = {}
        replies: list[tuple[Reply, str | None]] = []
        for part in changeset.parts:
            inner: Call | None = None
            try:
                inner = self._call(part, call, refs)
                reply = self.api.route(inner)
            except faults.DataverseFault as fault:
                reply = Reply.fault(fault)
            except Exception:
                store.rollback()
                raise
            if inner is not None:  # it ran (and is charged), even if rolled back below
                ran.append((inner, reply))
            if reply.status >= 400:
                store.rollback()
                # An atomic changeset answers with the one failure (batch docs).
                return [(reply, part.content_id)]
            if part.content_id and "OData-EntityId" in reply.headers:
                refs[part.content_id] = reply.headers["OData-EntityId"]
            replies.append((reply, part.content_id))
        store.commit()
        return replies

    def _one(
        self, part: Part, call: Call, refs: dict[str, str], ran: list[tuple[Call, Reply]]
    ) -> Reply:
        try:
            inner = self._call(part, call, refs)
        except faults.DataverseFault as fault:
            return Reply.fault(fault)
        reply = self.api.handle(inner)
        ran.append((inner, reply))
        return reply

    def _call(self, part: Part, call: Call, refs: dict[str, str]) -> Call:
        url = part.url
        m = _REF_RE.match(url)
        if m:
            if m.group(1) not in refs:
                raise faults.DataverseFault(
                    400,
                    "0x0",
                    f"Content-ID Reference: '${m.group(1)}' does not exist in the batch context.",
                )
            url = refs[m.group(1)] + m.group(2)
        if part.unreadable:
            entity_set = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1].split("(")[0]
            raise faults.bad_payload(
                entity_set, "System.ArgumentException: Stream was not readable."
            )
        body = part.body
        if refs and body and b'"$' in body:
            body = _resolve_binds(body, refs)
        split = urlsplit(url)
        # Percent-decoded like a top-level request's path (ASGI decodes it): a key such
        # as leads(emailaddress1='a%40b.c') names a@b.c.
        path = unquote(split.path)
        inside = split_api_path(path)
        if inside is not None:
            path = inside[1]
        path = path.lstrip("/")
        if path == "$batch":
            raise faults.bad_payload(
                "", "System.ArgumentException: nested $batch requests are not allowed."
            )
        return Call(
            method=part.method,
            path=path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={
                **{k: v for k, v in call.headers.items() if k.startswith("mscrm.")},
                **part.headers,
            },
            body=body,
            user_id=call.user_id,
            base=call.base,
            raw_query=split.query,
        )


def _resolve_binds(body: bytes, refs: dict[str, str]) -> bytes:
    try:
        payload = json.loads(body)
    except ValueError:
        return body
    if not isinstance(payload, dict):
        return body
    for name, value in payload.items():
        if name.endswith("@odata.bind") and isinstance(value, str):
            m = _REF_RE.match(value)
            if m and m.group(1) in refs:
                payload[name] = refs[m.group(1)] + m.group(2)
    return json.dumps(payload).encode()


def _render(reply: Reply, content_id: str | None) -> str:
    head = f"Content-Type: application/http{_CRLF}Content-Transfer-Encoding: binary{_CRLF}"
    if content_id:
        head += f"Content-ID: {content_id}{_CRLF}"
    from http import HTTPStatus

    try:
        phrase = HTTPStatus(reply.status).phrase
    except ValueError:
        phrase = ""
    lines = [f"HTTP/1.1 {reply.status} {phrase}"]
    lines += [f"{k}: {v}" for k, v in reply.headers.items()]
    return head + _CRLF + _CRLF.join(lines) + _CRLF + _CRLF + reply.body.decode() + _CRLF
