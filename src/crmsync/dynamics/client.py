"""``DataverseClient``: the one I/O boundary to Dynamics (Dataverse Web API v9.2).

Every request goes through ``_send``: it waits for the shared throttle gate and a
concurrency slot (``Limiter``), adds the bearer token and the OData headers, refreshes the
token once after a 401, records 429s on the gate, and turns failures into the families of
``crmsync.errors`` via ``faults.classify``. Everything else here builds requests and reads
responses with the pure helpers in ``batch``, ``pages`` and ``writes``.

The client is meant to be shared by all workers of a process: the throttle gate and the
concurrency limit then cover every request made with that credential.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from crmsync.dynamics import batch as wire
from crmsync.dynamics.auth import (
    CachingTokenProvider,
    Credentials,
    StaticTokenProvider,
    TokenProvider,
    source_for,
)
from crmsync.dynamics.faults import Throttled, TokenRejected, classify, from_transport_error
from crmsync.dynamics.limiter import (
    AdaptiveLimit,
    ExecutionBudget,
    Limiter,
    RateLimitRemaining,
    Reservation,
    estimate_ms,
    parse_dop_hint,
    parse_ratelimit,
)
from crmsync.dynamics.pages import (
    MAX_PAGE_SIZE,
    ChangePage,
    Page,
    max_page_size,
    parse_change_page,
    parse_page,
    prefer,
)
from crmsync.dynamics.writes import (
    BulkMessage,
    ItemResult,
    Write,
    bulk_payload,
    bulk_results,
    record_path,
    request_for,
    result_from,
    result_from_batch,
)
from crmsync.errors import (
    ConfigError,
    CrmsyncError,
    Fatal,
    ObjectUnusable,
    RecordRejected,
    Retriable,
    StaleRecord,
)
from crmsync.logs import Conditions
from crmsync.observability import count_crm_response, record_ratelimit

log = logging.getLogger(__name__)

API_PATH = "/api/data/v9.2/"
# compose-http-requests-handle-errors: required on every request.
ODATA_HEADERS = {
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
}
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
# Ids per read-back query: 36-character GUIDs, quoted, keep the URL near 21 KB (Dataverse
# refuses URLs over 32 KB outside $batch; inferred from IIS defaults, kept well under).
VERSION_CHUNK = 500
# Answers of a request Dataverse did not run, so charged no execution time for: throttled,
# or refused by the gateway before it reached the organisation.
NOT_EXECUTED = frozenset({429, 502, 503, 504})
EXECUTION_TIME_CODE = "0x80072321"  # 429: combined execution time over the limit


def _now() -> float:
    return time.monotonic()


def _with_query(path: str, params: Mapping[str, str]) -> str:
    """Append OData query options, keeping ``$`` and ``,`` readable as the docs write them."""
    query = urlencode({k: v for k, v in params.items() if v}, safe="$,'()", quote_via=quote)
    return f"{path}?{query}" if query else path


class DataverseClient:
    def __init__(
        self,
        dynamics_url: str,
        tokens: TokenProvider,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        limiter: Limiter | None = None,
        throttle_retries: int = 3,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = dynamics_url.rstrip("/") + API_PATH
        self._tokens = tokens
        self.limiter = limiter or Limiter()
        # The last x-ms-ratelimit-* values Dataverse sent, for /metrics (never for pacing).
        self.ratelimit: RateLimitRemaining | None = None
        self._throttle_retries = throttle_retries
        self.conditions = Conditions(log)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, transport=transport, timeout=timeout, headers=ODATA_HEADERS
        )

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        tokens: TokenProvider | None = None,
    ) -> DataverseClient:
        """Build from ``crmsync.config.Settings``; ``transport`` also carries token requests
        when it can (an ``httpx.MockTransport`` serves both sync MSAL and async calls)."""
        if not settings.dynamics_url:
            raise ConfigError("CRMSYNC_DYNAMICS_URL: required to talk to Dynamics")
        if tokens is None:
            missing = [
                f"CRMSYNC_{n.upper()}"
                for n in ("tenant_id", "client_id", "client_secret")
                if not getattr(settings, n)
            ]
            if missing:
                raise ConfigError("missing setting(s): " + ", ".join(missing))
            creds = Credentials(
                authority_url=settings.authority_url,
                tenant_id=settings.tenant_id,
                client_id=settings.client_id,
                client_secret=settings.client_secret.get_secret_value(),
                resource=settings.dynamics_url,
            )
            tokens = CachingTokenProvider(source_for(creds, transport))
        limit = AdaptiveLimit(ceiling=settings.max_concurrency, current=settings.max_concurrency)
        budget = ExecutionBudget(settings.execution_budget_ms, settings.execution_window_seconds)
        limiter = Limiter(limit, budget=budget)
        return cls(settings.dynamics_url, tokens, transport=transport, limiter=limiter)

    @classmethod
    def with_static_token(cls, dynamics_url: str, token: str, **kwargs: Any) -> DataverseClient:
        return cls(dynamics_url, StaticTokenProvider(token), **kwargs)

    def __repr__(self) -> str:
        return f"DataverseClient({self.base_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> DataverseClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the one place requests are sent ----------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        cost_ms: float | None = None,
        bulk: bool = False,
        held: Reservation | None = None,
    ) -> httpx.Response:
        """Send and return a 2xx/3xx response, or raise the classified error. ``cost_ms``:
        the execution time the request is expected to cost (``limiter.estimate_ms``);
        ``bulk``: part of a bulk request's work (``ExecutionBudget.charge``); ``held``:
        the budget's reservation, for the caller to ``amend`` once the answer is read."""
        refreshed = False
        throttles = 0
        cost = estimate_ms("read" if method == "GET" else "single") if cost_ms is None else cost_ms
        while True:
            async with self.limiter.slot(cost, bulk=bulk, held=held) as reservation:
                try:
                    token = await self._tokens.token()
                except Retriable as exc:
                    reservation.refund()
                    self.conditions.begin(
                        "dataverse.unreachable",
                        f"no token from the authority ({exc}); retrying with backoff",
                        event="dataverse.unreachable",
                        now=_now(),
                    )
                    raise
                h = {"Authorization": f"Bearer {token}", **(headers or {})}
                if json_body is not None:
                    content = json.dumps(json_body, separators=(",", ":")).encode("utf-8")
                    h.setdefault("Content-Type", "application/json")
                try:
                    resp = await self._http.request(method, url, headers=h, content=content)
                except httpx.HTTPError as exc:
                    reservation.refund()  # no answer: nothing known to be executed
                    error = from_transport_error(exc)
                    self.conditions.begin(
                        "dataverse.unreachable",
                        f"Dynamics is unreachable ({error}); retrying with backoff",
                        event="dataverse.unreachable",
                        now=_now(),
                        url=self.base_url,
                    )
                    raise error from exc
                if resp.status_code in NOT_EXECUTED:
                    reservation.refund()
            count_crm_response(resp.status_code)
            remaining = parse_ratelimit(resp.headers)
            if remaining is not None:
                self.ratelimit = remaining
                record_ratelimit(remaining.requests, remaining.execution_s)
            if resp.status_code < 400:
                await self.limiter.succeeded(parse_dop_hint(resp.headers.get("x-ms-dop-hint")))
                if self.conditions.active:
                    self.conditions.end_all("{name}: over, Dynamics answers again", now=_now())
                return resp
            error = classify(resp.status_code, resp.content, resp.headers)
            if isinstance(error, Retriable) and not isinstance(error, Throttled):
                self.conditions.begin(
                    "dataverse.failing",
                    f"Dynamics is failing requests ({error}); retrying with backoff",
                    event="dataverse.failing",
                    now=_now(),
                    status=resp.status_code,
                )
            if isinstance(error, TokenRejected) and not refreshed:
                # One refresh per 401; a second 401 with a new token is Fatal.
                refreshed = True
                await self._tokens.invalidate(token)
                continue
            if isinstance(error, Throttled):
                wait = error.retry_after or 0.0
                self.limiter.throttled(wait, execution=EXECUTION_TIME_CODE in str(error))
                self.conditions.begin(
                    "dataverse.throttled",
                    f"Dynamics is throttling requests (429, Retry-After {wait:g} s); "
                    "sending fewer at once",
                    event="dataverse.throttled",
                    now=_now(),
                    retry_after=wait,
                )
                if throttles < self._throttle_retries:
                    # Service protection rejects before executing, so resending is safe.
                    throttles += 1
                    continue
            raise error

    # --- reads --------------------------------------------------------------------------

    async def whoami(self) -> str:
        """The id of the system user this client acts as (the WhoAmI function); changes
        it made come back from change tracking with this ``_modifiedby_value``."""
        resp = await self._send("GET", "WhoAmI")
        data = resp.json()
        user = data.get("UserId") if isinstance(data, dict) else None
        if not isinstance(user, str):
            raise Fatal("Dynamics answered WhoAmI without a UserId")
        return user.lower()

    async def get_json(self, path: str) -> dict[str, Any]:
        """The JSON object at ``path`` (relative to the Web API, query included); a 404
        raises ``RecordRejected`` with ``status`` 404."""
        resp = await self._send("GET", path)
        data = resp.json()
        if not isinstance(data, dict):
            raise Fatal(f"Dynamics answered GET {path.split('?')[0]} with no JSON object")
        return data

    async def get(
        self, entity_set: str, record_id: str, *, select: Sequence[str] = ()
    ) -> dict[str, Any] | None:
        """One record, or None when it does not exist (404)."""
        url = _with_query(record_path(entity_set, record_id), {"$select": ",".join(select)})
        try:
            resp = await self._send("GET", url)
        except RecordRejected as exc:
            if exc.status == 404:
                return None
            raise
        data = resp.json()
        return data if isinstance(data, dict) else None

    async def query(
        self,
        entity_set: str,
        *,
        select: Sequence[str] = (),
        filter: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
        next_link: str | None = None,
        rows: int = 1,
        bulk: bool = False,
    ) -> AsyncIterator[Page]:
        """Pages of a query, following ``@odata.nextLink`` until there is none;
        ``next_link`` resumes a query where a saved link points (the rest is ignored);
        ``rows``: how many a page is expected to hold (its execution time estimate)."""
        params: dict[str, str] = {}
        if select:
            params["$select"] = ",".join(select)
        if filter:
            params["$filter"] = filter
        url: str | None = next_link or _with_query(entity_set, params)
        headers = {"Prefer": max_page_size(page_size)}
        while url is not None:
            cost = estimate_ms("read", min(rows, page_size))
            held = Reservation()
            resp = await self._send("GET", url, headers=headers, cost_ms=cost, bulk=bulk, held=held)
            page = parse_page(resp.json())
            held.amend(estimate_ms("read", len(page.rows)))  # charged by the rows that came
            yield page
            url = page.next_link

    async def changes(
        self,
        entity_set: str,
        *,
        select: Sequence[str] = (),
        delta_link: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> AsyncIterator[ChangePage]:
        """Change tracking: everything (with no ``delta_link``) or what changed since it.

        Yields pages; the last carries the new ``delta_link``. Raises ``DeltaTokenExpired``
        when Dataverse no longer knows the link's version: run a full sync instead.
        """
        if delta_link is None:
            url: str | None = _with_query(entity_set, {"$select": ",".join(select)})
        else:
            url = delta_link
        headers = {"Prefer": prefer("odata.track-changes", max_page_size(page_size))}
        while url is not None:
            held = Reservation()
            resp = await self._send("GET", url, headers=headers, held=held)
            page = parse_change_page(resp.json() if resp.content.strip() else {})
            # A page of changes is charged by its rows: up to 5,000 of them, ~1.65 s
            # where a one-row estimate said 0.1 s (the pacing overshot the budget by it).
            held.amend(estimate_ms("read", len(page.rows) + len(page.deleted_ids)))
            yield page
            url = page.next_link

    async def versions(
        self,
        entity_set: str,
        primary_key: str,
        ids: Sequence[str],
        select: Sequence[str] = (),
        *,
        bulk: bool = False,
    ) -> dict[str, dict[str, Any]]:
        """The current rows of ``ids`` (ETag, ``select``), by lower-case id, in one query
        per ``VERSION_CHUNK`` ids (the URL stays short); an absent record is left out.
        ``bulk``: read for a bulk request, paced as part of it."""
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), VERSION_CHUNK):
            chunk = ids[start : start + VERSION_CHUNK]
            values = ",".join(f"'{i}'" for i in chunk)
            flt = (
                f"Microsoft.Dynamics.CRM.In(PropertyName='{primary_key}',PropertyValues=[{values}])"
            )
            names = list(dict.fromkeys([primary_key, *select]))
            pages = self.query(entity_set, select=names, filter=flt, rows=len(chunk), bulk=bulk)
            async for page in pages:
                for row in page.rows:
                    key = row.get(primary_key)
                    if isinstance(key, str):
                        out[key.lower()] = row
        return out

    # --- writes, one record at a time --------------------------------------------------

    async def write(self, write: Write) -> ItemResult:
        """Send one write; raises the classified error instead of returning it."""
        req = request_for(write)
        resp = await self._send(req.method, req.url, headers=req.headers, json_body=req.body)
        body = resp.json() if resp.content.strip() else None
        return result_from(write, resp.status_code, resp.headers, body)

    async def create(
        self, entity_set: str, body: Mapping[str, Any], *, detect_duplicates: bool = False
    ) -> ItemResult:
        return await self.write(
            Write("create", entity_set, body=body, detect_duplicates=detect_duplicates)
        )

    async def upsert(
        self,
        entity_set: str,
        record_id: str,
        body: Mapping[str, Any],
        *,
        if_match: str | None = None,
        if_none_match: str | None = None,
        detect_duplicates: bool = False,
        return_representation: bool = False,
    ) -> ItemResult:
        return await self.write(
            Write(
                "upsert",
                entity_set,
                record_id,
                body,
                if_match=if_match,
                if_none_match=if_none_match,
                detect_duplicates=detect_duplicates,
                return_representation=return_representation,
            )
        )

    async def update(
        self, entity_set: str, record_id: str, body: Mapping[str, Any], *, if_match: str = "*"
    ) -> ItemResult:
        return await self.write(Write("update", entity_set, record_id, body, if_match=if_match))

    async def delete(self, entity_set: str, record_id: str, *, if_match: str | None = None) -> None:
        await self.write(Write("delete", entity_set, record_id, if_match=if_match))

    # --- writes in bulk: one result per item, in order ----------------------------------

    async def write_batch(
        self, writes: Sequence[Write], *, changesets: bool = False
    ) -> list[ItemResult]:
        """``$batch`` with ``odata.continue-on-error``: a bad record never fails its
        neighbours. Whole-request failures (throttling beyond the retries, 5xx, a cut
        connection) become that error on every item; ``Fatal`` is raised."""
        results: list[ItemResult] = []
        for start in range(0, len(writes), wire.MAX_BATCH_REQUESTS):
            chunk = writes[start : start + wire.MAX_BATCH_REQUESTS]
            results.extend(await self._batch_chunk(chunk, changesets))
        return results

    async def _batch_chunk(self, writes: Sequence[Write], changesets: bool) -> list[ItemResult]:
        requests = [request_for(w) for w in writes]
        content_type, body = wire.encode_requests(requests, changesets=changesets)
        headers = {"Content-Type": content_type, "Prefer": "odata.continue-on-error"}
        cost = estimate_ms("batch", len(writes))
        try:
            resp = await self._send("POST", "$batch", headers=headers, content=body, cost_ms=cost)
            responses = wire.decode_responses(resp.headers.get("content-type", ""), resp.content)
        except (Fatal, ObjectUnusable):
            raise  # about more than these items
        except wire.BatchFormatError as exc:
            raise Fatal(f"unreadable $batch response: {exc}") from exc
        except CrmsyncError as exc:
            return [ItemResult(crm_id=w.record_id, error=exc) for w in writes]
        results = [
            result_from_batch(w, responses[i] if i < len(responses) else None)
            for i, w in enumerate(writes)
        ]
        waits = [r.error.retry_after or 0.0 for r in results if isinstance(r.error, Throttled)]
        if waits:
            # A throttled part inside the batch gates every worker, like an outer 429.
            self.limiter.throttled(max(waits))
        return results

    async def write_multiple(
        self,
        message: BulkMessage,
        entity_set: str,
        logical_name: str,
        primary_key: str,
        writes: Sequence[Write],
        *,
        fallback: bool = True,
    ) -> list[ItemResult]:
        """``CreateMultiple``/``UpdateMultiple``/``UpsertMultiple`` on one table.

        On standard tables one bad record rolls the whole request back (bulk-operations),
        so a rejection falls back to ``write_batch`` for precise per-item results; with
        ``fallback=False`` it is raised instead (the engine bisects, ``engine/bulk.py``).
        """
        if not writes:
            return []
        payload = bulk_payload(message, entity_set, logical_name, primary_key, writes)
        extra: dict[str, str] = {}
        if any(w.detect_duplicates for w in writes):
            extra["MSCRM.SuppressDuplicateDetection"] = "false"
        url = f"{entity_set}/Microsoft.Dynamics.CRM.{message}"
        try:
            cost = estimate_ms(message, len(writes))
            resp = await self._send("POST", url, headers=extra, json_body=payload, cost_ms=cost)
        except (Fatal, ObjectUnusable):
            raise  # about more than these items
        except (RecordRejected, StaleRecord):
            if not fallback:
                raise
            log.info(
                "bulk message rejected; resending per item",
                extra={
                    "event": "dataverse.bulk_fallback",
                    # not "message": a LogRecord's own attribute (logging raises KeyError)
                    "bulk_message": message,
                    "items": len(writes),
                },
            )
            return await self.write_batch(writes)
        except CrmsyncError as exc:
            return [ItemResult(crm_id=w.record_id, error=exc) for w in writes]
        body = resp.json() if resp.content.strip() else None
        return bulk_results(writes, body)
