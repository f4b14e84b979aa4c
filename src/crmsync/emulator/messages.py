"""Message discovery: ``sdkmessagefilters`` (which messages a table supports),
``RetrieveAvailableLanguages`` and ``RetrieveAllEntities``.

Clients probe bulk-message support with ``GET sdkmessagefilters?$select=
sdkmessagefilterid&$expand=sdkmessageid($select=name)&$filter=sdkmessageid/name eq
'CreateMultiple' and primaryobjecttypecode eq 'lead'`` (reference section 4). The
emulator lists one filter per table and message it runs (the bulk messages on every
business table; Dataverse lacked them on some tables in 2023). The set is read-only;
``$select``, ``$filter`` (with the ``sdkmessageid/name`` path), ``$expand=sdkmessageid``
and ``$top`` are honoured, anything else refused. Languages: the emulator's labels are
en-US only, so ``LocaleIds`` is ``[1033]``.
"""

from __future__ import annotations

import uuid
from typing import Any

from crmsync.emulator import faults, metaquery
from crmsync.emulator.http import Call, Reply
from crmsync.emulator.model import ENTITIES
from crmsync.numerals import whole

Row = dict[str, Any]
_MESSAGES = (
    "Create", "Retrieve", "RetrieveMultiple", "Update", "Delete", "Upsert",
    "CreateMultiple", "UpdateMultiple", "UpsertMultiple",
)  # fmt: skip
_READ_ONLY = ("systemuser", "asyncoperation")
_PROPS = {
    "sdkmessagefilterid", "primaryobjecttypecode", "secondaryobjecttypecode", "isvisible",
    "iscustomprocessingstepallowed", "availability", "_sdkmessageid_value",
}  # fmt: skip
_NAVS: dict[str, Any] = {"sdkmessageid": ("sdkmessage", {"sdkmessageid", "name"}, {})}


def _id(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "crmsync-emulator/" + "/".join(parts)))


def _rows() -> list[Row]:
    out = []
    for e in ENTITIES.values():
        names = _MESSAGES[:3] if e.logical in _READ_ONLY else _MESSAGES
        for name in names:
            message = {"sdkmessageid": _id("sdkmessage", name), "name": name}
            out.append(
                {
                    "sdkmessagefilterid": _id("sdkmessagefilter", e.logical, name),
                    "primaryobjecttypecode": e.logical,
                    "secondaryobjecttypecode": "none",
                    "isvisible": True,
                    "iscustomprocessingstepallowed": True,
                    "availability": 0,
                    "_sdkmessageid_value": message["sdkmessageid"],
                    "sdkmessageid": message,  # for the filter path; shown only if expanded
                }
            )
    return out


def sdk_message_filters(call: Call) -> Reply:
    if call.method != "GET":
        raise faults.no_resource(call.base + call.path)
    query = dict(call.query)
    top = query.pop("$top", None)
    opts = metaquery.parse(query, "sdkmessagefilter", _PROPS | {"sdkmessageid"}, _NAVS)
    if opts.select is None:
        opts.select = sorted(_PROPS)
    for name in opts.select:
        if name == "sdkmessageid":
            raise metaquery.no_property("sdkmessagefilter", name)
    if "sdkmessagefilterid" not in opts.select:
        opts.select.append("sdkmessagefilterid")  # the key always comes back
    rows = metaquery.apply(_rows(), opts, {"sdkmessageid": lambda r: r["sdkmessageid"]})
    if top is not None:
        count = whole(top)
        if count is None:
            raise faults.bad_query(f"Invalid value '{top}' for $top query option found.")
        rows = rows[:count]
    for row in rows:
        row.pop("@odata.type", None)
        if "sdkmessageid" not in opts.expand:
            row.pop("sdkmessageid", None)
    ctx = f"{call.base}$metadata#sdkmessagefilters"
    return Reply.json(200, {"@odata.context": ctx, "value": rows}, len(rows))


def available_languages(call: Call) -> Reply:
    ctx = f"{call.base}$metadata#Microsoft.Dynamics.CRM.RetrieveAvailableLanguagesResponse"
    return Reply.json(200, {"@odata.context": ctx, "LocaleIds": [1033]})
