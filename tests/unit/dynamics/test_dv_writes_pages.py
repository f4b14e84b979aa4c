"""Pure request/response mapping for writes, and page parsing."""

from __future__ import annotations

import pytest

from crmsync.dynamics.pages import max_page_size, parse_change_page, parse_page
from crmsync.dynamics.writes import Write, id_from_entity_url, request_for, result_from
from crmsync.errors import Fatal, RecordRejected

GUID = "aed2ae8b-3c5a-ed11-9561-002248080e7f"


def test_write_needs_id_except_create() -> None:
    with pytest.raises(ValueError):
        Write("upsert", "leads")
    assert request_for(Write("create", "leads", body={"a": 1})).method == "POST"


def test_request_forms() -> None:
    up = request_for(Write("upsert", "leads", GUID, {"a": 1}))
    assert (up.method, up.url, dict(up.headers)) == ("PATCH", f"leads({GUID})", {})
    upd = request_for(Write("update", "leads", GUID, {"a": 1}))
    assert upd.headers == {"If-Match": "*"}
    only_new = request_for(Write("upsert", "leads", GUID, {}, if_none_match="*"))
    assert only_new.headers == {"If-None-Match": "*"}
    dele = request_for(Write("delete", "leads", GUID, detect_duplicates=True))
    assert (dele.method, dele.body, dict(dele.headers)) == ("DELETE", None, {})


def test_result_mapping() -> None:
    w = Write("create", "leads", body={})
    ok = result_from(
        w, 204, {"odata-entityid": f"https://x/api/data/v9.2/leads({GUID.upper()})"}, None
    )
    assert ok.ok and ok.crm_id == GUID and ok.created
    rep = result_from(
        Write("upsert", "leads", GUID, {}, return_representation=True),
        200,
        {},
        {"@odata.etag": 'W/"5"'},
    )
    assert (rep.etag, rep.created) == ('W/"5"', False)
    bad = result_from(w, 400, {}, {"error": {"code": "0x80044331", "message": "m"}})
    assert isinstance(bad.error, RecordRejected) and not bad.ok
    assert id_from_entity_url(None) is None
    assert id_from_entity_url("leads(emailaddress1='x')") is None


def test_page_parsing() -> None:
    page = parse_page({"value": [{"a": 1}, "junk"], "@odata.nextLink": "n"})
    assert page.rows == [{"a": 1}] and page.next_link == "n"
    with pytest.raises(Fatal):
        parse_page({"error": "x"})
    empty = parse_change_page({})
    assert empty.rows == [] and empty.deleted_ids == [] and empty.delta_link is None
    assert parse_change_page({"value": [], "@odata.deltaLink": "d"}).delta_link == "d"
    with pytest.raises(ValueError):
        max_page_size(5001)
