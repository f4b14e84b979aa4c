"""Collection reads: filtered, ordered, paged queries and change tracking.

Paging follows ``webapi/query/page-results.md``: at most 5,000 rows a page (larger
``odata.maxpagesize`` values are ignored), an opaque ``$skiptoken`` cookie in
``@odata.nextLink``, ``$top`` ignored when a page size is preferred, ``$skip`` refused.
Change tracking follows ``use-change-tracking-synchronize-data-external-systems.md``:
the first read returns every row and a ``@odata.deltaLink``; a delta read returns rows
changed since the token, oldest first, then ``$deletedEntity`` entries.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from crmsync.emulator import aggregate, expand, faults, fetchxml, sqlquery
from crmsync.emulator.annotations import annotate
from crmsync.emulator.annotations import applied as annotations_applied
from crmsync.emulator.http import Call, Reply
from crmsync.emulator.model import Entity
from crmsync.emulator.odata import (
    compile_filter,
    decode_skiptoken,
    encode_skiptoken,
    parse_orderby,
    parse_prefer,
    parse_select,
    sort_key,
)
from crmsync.emulator.records import represent
from crmsync.emulator.settings import Settings
from crmsync.emulator.store import Store
from crmsync.numerals import whole

MAX_PAGE = 5000
_KNOWN = {
    "$select",
    "$filter",
    "$orderby",
    "$top",
    "$count",
    "$skiptoken",
    "$deltatoken",
    "$skip",
    "$expand",
    "$apply",
}
# Whole-query languages, each a single option (use-fetchxml-web-api.md, sdk-python/query.md).
_QUERY_LANGUAGES = ("fetchXml", "sql")
_NOT_WITH_TRACKING = ("$filter", "$orderby", "$expand", "$top")


class Reader:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        # Tokens issued before this version are expired (PUT /_emulator/config
        # {"expire_delta_tokens": true}); lets clients test their full-sync recovery.
        self.delta_floor = 0

    def count(self, entity: Entity, call: Call) -> Reply:
        """``GET /{set}/$count``: a bare number, capped like ``$count`` at 5,000
        (query/count-rows.md), of the rows ``$filter`` keeps: OData counts "after
        applying any $filter" (URL conventions, section 11.2.10); Dataverse's page shows
        the bare form only, so honouring ``$filter`` there is inferred. Any other option
        is refused, never ignored: ignoring ``$filter`` answered the whole table."""
        for name in call.query:
            if name != "$filter":
                raise faults.bad_query(f"The query parameter {name} is not supported")
        text_filter = call.query.get("$filter")
        if text_filter:
            predicate = compile_filter(text_filter, entity)
            rows = self.store.tables[entity.entity_set].rows.values()
            total = sum(1 for r in rows if predicate(r))
        else:
            total = self.store.count(entity.entity_set)
        text = str(min(total, MAX_PAGE)).encode()
        return Reply(200, {"Content-Type": "text/plain", "OData-Version": "4.0"}, text)

    def collection(self, entity: Entity, call: Call) -> Reply:
        q = call.query
        for name in q:
            if name not in _KNOWN and name not in _QUERY_LANGUAGES:
                # Never ignore an option: an ignored one answers 200 with the wrong rows.
                raise faults.bad_query(f"The query parameter {name} is not supported")
        language = [name for name in _QUERY_LANGUAGES if name in q]
        if language:
            return self._language(entity, call, language)
        if "$apply" in q:
            return self._aggregate(entity, call)
        if "$skip" in q:
            raise faults.bad_query("The query parameter $skip is not supported")
        prefer = parse_prefer(call.header("prefer"))
        select = parse_select(q.get("$select"), entity)
        page_size = min(prefer.maxpagesize or MAX_PAGE, MAX_PAGE)
        if "$deltatoken" in q:
            return self._delta(entity, call, select, page_size)
        if prefer.track_changes:
            for option in _NOT_WITH_TRACKING:
                if option in q:
                    raise faults.track_changes_option(option)
        expansions = expand.parse(q.get("$expand"), entity)
        predicate = compile_filter(q["$filter"], entity) if q.get("$filter") else None
        keys = _key_lookup(q.get("$filter"), entity)
        orderby = parse_orderby(q.get("$orderby"), entity)
        top = _top(q.get("$top")) if prefer.maxpagesize is None else None
        state: dict[str, Any] = {}
        page = 1
        if "$skiptoken" in q:
            state, page = decode_skiptoken(q["$skiptoken"])
        upto = _cookie(state, "upto", int, self.store.version)
        limit = min(top, page_size) if top is not None else page_size
        rows, more, state_next = self._page(entity, predicate, orderby, state, limit, keys)
        if top is not None:
            more = False
        context = _context(call, entity, select)
        payload: dict[str, Any] = {"@odata.context": context}
        if q.get("$count", "").lower() == "true":
            total = sum(
                1
                for r in self.store.tables[entity.entity_set].rows.values()
                if predicate is None or predicate(r)
            )
            # $count is limited to 5,000 like a page (query/count-rows.md).
            payload["@odata.count"] = min(total, MAX_PAGE)
        payload["value"] = [
            annotate(entity, represent(entity, r, select), prefer, self.store) for r in rows
        ]
        expand.expand_rows(expansions, rows, payload["value"], self.store, prefer)
        headers: dict[str, str] = {}
        applied = []
        if annotations_applied(prefer):
            applied.append(annotations_applied(prefer) or "")
        if prefer.maxpagesize is not None:
            applied.append(f"odata.maxpagesize={prefer.maxpagesize}")
        if prefer.track_changes:
            applied.append("odata.track-changes")
        if applied:
            headers["Preference-Applied"] = ",".join(applied)
        if more:
            state_next["upto"] = upto
            token = encode_skiptoken(state_next, page + 1, prefer.track_changes)
            payload["@odata.nextLink"] = _link(call, entity, {"$skiptoken": token})
        elif prefer.track_changes:
            payload["@odata.deltaLink"] = _link(
                call, entity, {"$deltatoken": _delta_token(upto)}, keep=("$select",)
            )
        reply = Reply.json(200, payload, len(rows))
        reply.headers.update(headers)
        return reply

    def _language(self, entity: Entity, call: Call, names: list[str]) -> Reply:
        """``fetchXml=`` or ``sql=``: a whole query in one option, alone on the URL."""
        others = [n for n in call.query if n != names[0]]
        if others:
            # (inferred) Dataverse documents no mix of fetchXml/sql with OData options.
            raise faults.bad_query(
                f"The query parameter {others[0]} can't be combined with {names[0]}."
            )
        prefer = parse_prefer(call.header("prefer"))
        if prefer.track_changes:
            raise faults.bad_query(
                f"The query parameter {names[0]} isn't supported with Change Tracking."
            )
        if names[0] == "fetchXml":
            fetch = fetchxml.parse(call.query["fetchXml"], entity)
            return fetchxml.run(fetch, self.store, call, prefer)
        select = sqlquery.parse(call.query["sql"], entity)
        return sqlquery.run(select, entity, self.store, call)

    def _aggregate(self, entity: Entity, call: Call) -> Reply:
        others = [n for n in call.query if n not in ("$apply", "$orderby")]
        if others:
            raise faults.bad_query(
                f"The query parameter {others[0]} can't be combined with $apply."
            )
        prefer = parse_prefer(call.header("prefer"))
        if prefer.track_changes:
            raise faults.track_changes_option("$apply")
        spec = aggregate.parse(call.query["$apply"], entity)
        rows = list(self.store.tables[entity.entity_set].rows.values())
        out = aggregate.run(spec, rows, call.query.get("$orderby"), entity)
        value = [annotate(entity, r, prefer, self.store) for r in out]
        reply = Reply.json(200, {"@odata.context": _context(call, entity, None), "value": value})
        if annotations_applied(prefer):
            reply.headers["Preference-Applied"] = annotations_applied(prefer) or ""
        return reply

    def _page(
        self,
        entity: Entity,
        predicate: Any,
        orderby: list[tuple[str, bool]],
        state: dict[str, Any],
        limit: int,
        keys: list[str] | None = None,
    ) -> tuple[list[dict[str, Any]], bool, dict[str, Any]]:
        if not orderby and keys is not None:
            # The primary key's index: only the listed rows are looked at.
            after = _cookie(state, "after", str, None)
            found = [
                row
                for key in keys
                if (after is None or key > after)
                and (row := self.store.get(entity.entity_set, key)) is not None
                and predicate(row)
            ]
            if len(found) > limit:
                return found[:limit], True, {"after": found[limit - 1][entity.primary_id]}
            return found, False, {}
        if not orderby:
            # Keyset paging on the primary key: each page costs O(page), not O(table).
            rows: list[dict[str, Any]] = []
            for row in self.store.scan_from(entity.entity_set, _cookie(state, "after", str, None)):
                if predicate is None or predicate(row):
                    if len(rows) == limit:
                        return rows, True, {"after": rows[-1][entity.primary_id]}
                    rows.append(row)
            return rows, False, {}
        matched = [
            r
            for r in self.store.tables[entity.entity_set].rows.values()
            if predicate is None or predicate(r)
        ]
        matched.sort(key=sort_key(orderby, entity.primary_id))
        offset = _cookie(state, "offset", int, 0)
        chunk = matched[offset : offset + limit]
        more = offset + limit < len(matched)
        return chunk, more, {"offset": offset + limit}

    def _delta(self, entity: Entity, call: Call, select: list[str] | None, page_size: int) -> Reply:
        prefer = parse_prefer(call.header("prefer"))
        since = self._check_token(call.query["$deltatoken"])
        state: dict[str, Any] = {}
        page = 1
        if "$skiptoken" in call.query:
            state, page = decode_skiptoken(call.query["$skiptoken"])
        upto = _cookie(state, "upto", int, self.store.version)
        table = self.store.tables[entity.entity_set]
        entries: list[dict[str, Any]] = []
        phase = _cookie(state, "phase", str, "rows")
        after = _cookie(state, "after", int, since)
        if phase not in ("rows", "deleted"):
            raise faults.bad_query("The $skiptoken value is invalid.")
        deleted_context = f"{call.base}$metadata#{entity.entity_set}/$deletedEntity"
        more = False
        if phase == "rows":
            changed = table.changed_since(after, upto)
            for row in changed[:page_size]:
                shaped = represent(entity, row, select)
                entries.append(annotate(entity, shaped, prefer, self.store))
            if len(changed) > page_size:
                more, state = (
                    True,
                    {"phase": "rows", "after": changed[page_size - 1]["versionnumber"]},
                )
            else:
                phase, after = "deleted", since
        if phase == "deleted" and not more:
            room = page_size - len(entries)
            gone = table.deleted_since(after, upto)
            for _version, key in gone[:room]:
                entries.append({"@odata.context": deleted_context, "id": key, "reason": "deleted"})
            if len(gone) > room:
                last = gone[room - 1][0] if room > 0 else after
                more, state = True, {"phase": "deleted", "after": last}
        payload: dict[str, Any] = {"@odata.context": _context(call, entity, select) + "/$delta"}
        payload["value"] = entries
        if more:
            state["upto"] = upto
            token = encode_skiptoken(state, page + 1, True)
            payload["@odata.nextLink"] = _link(
                call,
                entity,
                {"$deltatoken": call.query["$deltatoken"], "$skiptoken": token},
                keep=("$select",),
            )
        else:
            payload["@odata.deltaLink"] = _link(
                call, entity, {"$deltatoken": _delta_token(upto)}, keep=("$select",)
            )
        return Reply.json(200, payload, len(entries))

    def _check_token(self, token: str) -> int:
        # "<version>!<MM/DD/YYYY HH:MM:SS>" as in the docs' example token (inferred shape).
        version_text, _, stamp = token.partition("!")
        try:
            version = int(version_text)
            issued = datetime.strptime(stamp, "%m/%d/%Y %H:%M:%S").replace(tzinfo=UTC).timestamp()
        except ValueError as exc:
            raise faults.delta_expired() from exc
        if version > self.store.version or version < self.delta_floor:
            raise faults.delta_expired()
        if time.time() - issued > self.settings.delta_token_ttl_s:
            raise faults.delta_expired()
        return version

    def expire_tokens(self) -> None:
        self.delta_floor = self.store.next_version()


_IN_KEYS = re.compile(
    r"\s*Microsoft\.Dynamics\.CRM\.In\(\s*PropertyName\s*=\s*'(\w+)'\s*,"
    r"\s*PropertyValues\s*=\s*\[((?:\s*'[0-9a-fA-F-]{36}'\s*,?)*)\]\s*\)\s*",
    re.IGNORECASE,
)


def _key_lookup(text: str | None, entity: Entity) -> list[str] | None:
    """The sorted primary keys a filter that is only ``In`` on the primary key lists
    (Dataverse answers it from the key's index), else None: a scan."""
    m = _IN_KEYS.fullmatch(text or "")
    if m is None or m.group(1).lower() != entity.primary_id:
        return None
    return sorted({k.lower() for k in re.findall(r"'([0-9a-fA-F-]{36})'", m.group(2))})


def _cookie(state: dict[str, Any], key: str, kind: type[Any], default: Any) -> Any:
    """One value of a ``$skiptoken``'s cookie, of the type the emulator wrote there: a
    cookie a client changed is Dataverse's invalid token, not a server error."""
    value = state.get(key, default)
    if value is not default and (not isinstance(value, kind) or isinstance(value, bool)):
        raise faults.bad_query("The $skiptoken value is invalid.")
    return value


def _top(text: str | None) -> int | None:
    if text is None:
        return None
    value = whole(text)
    if value is None:
        raise faults.bad_query(f"Invalid value '{text}' for $top query option found.")
    return min(value, MAX_PAGE)


def _delta_token(version: int) -> str:
    return f"{version}!{datetime.now(UTC).strftime('%m/%d/%Y %H:%M:%S')}"


def _context(call: Call, entity: Entity, select: list[str] | None) -> str:
    if select is None:
        return f"{call.base}$metadata#{entity.entity_set}"
    return f"{call.base}$metadata#{entity.entity_set}({','.join(select)})"


def _link(
    call: Call, entity: Entity, extra: dict[str, str], keep: tuple[str, ...] | None = None
) -> str:
    params = {
        k: v
        for k, v in call.query.items()
        if k not in ("$skiptoken", "$deltatoken") and (keep is None or k in keep)
    }
    params.update(extra)
    return f"{call.base}{entity.entity_set}?{urlencode(params, quote_via=quote, safe='$,')}"
