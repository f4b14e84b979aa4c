"""The Web API resource tree below ``/api/data/v9.2/``: one ``Call`` in, one ``Reply`` out.

Routes: the service document and ``$metadata`` (``service``); ``{set}`` (reads in
``query``: OData, ``fetchXml=``, ``sql=``, ``$apply``), ``{set}({key})`` by GUID, named
primary key or alternate key (``keys``), ``{set}({key})/{property|navigation}[/$value|
/$ref]`` (``properties``, ``refs``), ``{set}/$count``, the bulk messages, ``$batch``,
``WhoAmI``, ``BulkDelete``, ``EntityDefinitions`` (``metadata``), ``RetrieveMetadataChanges``
/ ``RetrieveAllEntities`` / ``RetrieveEntity`` (``metachanges``), ``sdkmessagefilters`` /
``RetrieveAvailableLanguages`` (``messages``) and ``RetrieveTotalRecordCount``. Errors are
``DataverseFault`` and become Dataverse's JSON error body.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from crmsync.emulator import (
    bulkdelete,
    expand,
    faults,
    keys,
    messages,
    metachanges,
    metadata,
    properties,
    service,
)
from crmsync.emulator.annotations import annotate
from crmsync.emulator.annotations import applied as annotations_applied
from crmsync.emulator.http import Call, Reply, etag
from crmsync.emulator.model import ENTITIES, Entity, is_guid, normalize_guid
from crmsync.emulator.odata import Prefer, parse_prefer
from crmsync.emulator.query import Reader
from crmsync.emulator.records import Writer, parse_body, represent
from crmsync.emulator.settings import Settings
from crmsync.emulator.store import Store

_PATH_RE = re.compile(
    r"^(?P<name>[A-Za-z_$][A-Za-z0-9_.]*)(?:\((?P<key>[^)]*)\))?(?:/(?P<rest>.*))?$"
)
_BULK = {
    f"Microsoft.Dynamics.CRM.{m}": m for m in ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
}
_VERBS = {"GET": "Read", "POST": "Create", "PATCH": "Write", "PUT": "Write", "DELETE": "Delete"}
ORGANIZATION_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "crmsync-emulator/organization"))
BUSINESS_UNIT_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "crmsync-emulator/businessunit"))


class Api:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.reader = Reader(store, settings)
        self.writer = Writer(store, settings)
        self.jobs: list[Any] = []  # BulkDelete jobs accepted, not yet run

    def run_jobs(self) -> None:
        """Run the pending asynchronous jobs (BulkDelete), each its own transaction."""
        while self.jobs:
            job = self.jobs.pop(0)
            self.store.begin()
            try:
                bulkdelete.run(job, self.store)
            except Exception:
                self.store.rollback()
                raise
            self.store.commit()

    def handle(self, call: Call) -> Reply:
        """Run one request as its own transaction (after any pending job)."""
        self.run_jobs()
        self.store.begin()
        try:
            reply = self.route(call)
        except faults.DataverseFault as fault:
            self.store.rollback()
            return Reply.fault(fault)
        except Exception:
            self.store.rollback()
            raise
        self.store.commit()
        return reply

    def route(self, call: Call) -> Reply:
        if call.path == "" and call.method == "GET":
            return service.service_document(call)
        m = _PATH_RE.match(call.path)
        if m is None:
            raise faults.no_resource(call.base + call.path)
        name, key, rest = m.group("name"), m.group("key"), m.group("rest")
        if name == "$metadata" and call.method == "GET" and key is None and not rest:
            return service.csdl(call)
        if name == "BulkDelete" and call.method == "POST" and key is None and not rest:
            reply, job = bulkdelete.submit(call, self.store)
            self.jobs.append(job)
            return reply
        if name == "sdkmessagefilters" and key is None and not rest:
            return messages.sdk_message_filters(call)
        if name == "RetrieveMetadataChanges" and call.method == "GET" and not rest:
            return metachanges.retrieve_metadata_changes(call, key)
        if name == "RetrieveAllEntities" and call.method == "GET" and not rest:
            return metachanges.retrieve_all_entities(call, key)
        if name == "RetrieveEntity" and call.method == "GET" and not rest:
            return metachanges.retrieve_entity(call, key)
        if name == "RetrieveAvailableLanguages" and call.method == "GET" and not rest:
            return messages.available_languages(call)
        if name == "RetrieveTotalRecordCount" and call.method == "GET" and not rest:
            return service.total_record_count(call, key, self.store)
        if name == "WhoAmI" and call.method == "GET":
            return Reply.json(
                200,
                {
                    "@odata.context": f"{call.base}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                    "BusinessUnitId": BUSINESS_UNIT_ID,
                    "UserId": call.user_id,
                    "OrganizationId": ORGANIZATION_ID,
                },
            )
        if name == "EntityDefinitions":
            return metadata.handle(call, key, rest, self.settings.alternate_keys)
        entity = ENTITIES.get(name)
        if entity is None:
            raise faults.unknown_segment(name)
        if name in self.settings.denied_entity_sets:
            verb = _VERBS.get(call.method, "Read")
            if rest in _BULK and rest != "Microsoft.Dynamics.CRM.CreateMultiple":
                verb = "Write"
            raise faults.privilege_denied(
                call.user_id, f"prv{verb}{entity.schema}", entity.otc, entity.logical
            )
        if key is None:
            return self._collection(entity, call, rest)
        record_id, key_values = self._key(entity, key)
        if record_id is None:  # an alternate key that finds no row
            if call.method != "PATCH" or rest:
                raise keys.not_found(entity)
            new_id = str(uuid.uuid4())
            return self.writer.patch(entity, new_id, call, key_values, location=key)
        if rest:
            return properties.handle(self.store, self.writer, entity, record_id, rest, call)
        if call.method == "GET":
            return self._retrieve(entity, record_id, call)
        if call.method == "PATCH":
            location = key if key_values else None
            return self.writer.patch(entity, record_id, call, key_values, location=location)
        if call.method == "DELETE":
            return self.writer.delete(entity, record_id, call)
        raise faults.no_resource(call.base + call.path)

    def _collection(self, entity: Entity, call: Call, rest: str | None) -> Reply:
        if rest == "$count" and call.method == "GET":
            return self.reader.count(entity, call)
        if rest in _BULK and call.method == "POST":
            return self.writer.bulk(entity, _BULK[rest], call)
        if rest:
            raise faults.unknown_segment(rest.split("/")[0])
        if call.method == "GET":
            return self.reader.collection(entity, call)
        if call.method == "POST":
            row = self.writer.create(entity, parse_body(call, entity.entity_set), call)
            location = f"{call.base}{entity.entity_set}({row[entity.primary_id]})"
            prefer = parse_prefer(call.header("prefer"))
            if prefer.representation:
                body = annotate(entity, represent(entity, row, None), prefer, self.store)
                body = {
                    "@odata.context": f"{call.base}$metadata#{entity.entity_set}/$entity",
                    **body,
                }
                return _with_applied(Reply.json(201, body, 1, ETag=etag(row)), prefer)
            return Reply.empty(204, 1, OData_EntityId=location, Location=location)
        raise faults.no_resource(call.base + call.path)

    def _retrieve(self, entity: Entity, record_id: str, call: Call) -> Reply:
        from crmsync.emulator.odata import parse_select

        select = parse_select(call.query.get("$select"), entity)
        row = self.store.get(entity.entity_set, record_id)
        if row is None:
            raise faults.not_found(entity.logical, record_id)
        prefer = parse_prefer(call.header("prefer"))
        for name in call.query:
            if name not in ("$select", "$expand"):
                raise faults.bad_query(f"The query parameter {name} is not supported")
        expansions = expand.parse(call.query.get("$expand"), entity)
        # Conditional GET: 304 when the caller already holds this version, but never with
        # $expand or odata.include-annotations (perform-conditional-operations-...md).
        fresh = (call.header("if-none-match") or "").strip() == etag(row)
        if fresh and not prefer.annotations and not expansions:
            return Reply.empty(304)
        context = f"{call.base}$metadata#{entity.entity_set}"
        context += f"({','.join(select)})/$entity" if select else "/$entity"
        body = annotate(entity, represent(entity, row, select), prefer, self.store)
        expand.expand_rows(expansions, [row], [body], self.store, prefer)
        reply = Reply.json(200, {"@odata.context": context, **body}, 1, ETag=etag(row))
        return _with_applied(reply, prefer)

    def _key(self, entity: Entity, key: str) -> tuple[str | None, dict[str, Any]]:
        """(primary key or None, alternate-key values) for the text between parentheses."""
        text = key.strip()
        if is_guid(text):
            return normalize_guid(text), {}
        pairs = keys.parse_pairs(text)
        if pairs is None:
            raise faults.bad_query(
                f"Bad Request - Error in query syntax: '{key}' is not a valid key."
            )
        # The named form of the primary key, leads(leadid=<guid>), is a key too.
        value = pairs.get(entity.primary_id)
        if len(pairs) == 1 and value is not None and is_guid(value):
            return normalize_guid(value), {}
        return keys.resolve(entity, pairs, self.settings.alternate_keys, self.store)


def _with_applied(reply: Reply, prefer: Prefer) -> Reply:
    item = annotations_applied(prefer)
    if item:
        reply.headers["Preference-Applied"] = item
    return reply
