"""The emulator's own request and response values, shared by the ASGI app and ``$batch``.

A ``$batch`` part is executed exactly like a top-level request, so both build a
``Call`` and get back a ``Reply``; only the ASGI layer knows about sockets.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from crmsync.emulator.faults import DataverseFault

API_PREFIX = "/api/data/v9.2/"
# v9.0 and v9.1 are served as v9.2: the Web API keeps older versions working with the
# current behaviour ("The current version is v9.2", compose-http-requests-handle-errors.md).
API_ROOT_RE = re.compile(r"^/api/data/v9\.[012](?:/|$)")


def split_api_path(path: str) -> tuple[str, str] | None:
    """``/api/data/v9.1/leads`` -> ("/api/data/v9.1/", "leads"); None outside the API."""
    m = API_ROOT_RE.match(path)
    if m is None:
        return None
    root = m.group(0) if m.group(0).endswith("/") else m.group(0) + "/"
    return root, path[m.end() :]


@dataclass
class Call:
    method: str
    path: str  # below /api/data/v9.2/, e.g. "leads(<id>)"
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    user_id: str
    base: str  # absolute service root ending in "/api/data/v9.2/"
    raw_query: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    records: int = 0  # rows read or written, for per-record latency
    # A $batch reply: each part that ran, with its reply, for the execution time charged.
    parts: list[tuple[Call, Reply]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, payload: Any, records: int = 0, **headers: str) -> Reply:
        head = {"Content-Type": "application/json; odata.metadata=minimal", "OData-Version": "4.0"}
        head.update({k.replace("_", "-"): v for k, v in headers.items()})
        return cls(status, head, dumps(payload), records)

    @classmethod
    def empty(cls, status: int = 204, records: int = 0, **headers: str) -> Reply:
        head = {"OData-Version": "4.0"}
        head.update({k.replace("_", "-"): v for k, v in headers.items()})
        return cls(status, head, b"", records)

    @classmethod
    def fault(cls, fault: DataverseFault) -> Reply:
        head = {"Content-Type": "application/json; odata.metadata=minimal", "OData-Version": "4.0"}
        head.update(fault.headers)
        return cls(fault.status, head, dumps(fault.body()), fault.processed)


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def etag(row: dict[str, Any]) -> str:
    return f'W/"{row["versionnumber"]}"'
