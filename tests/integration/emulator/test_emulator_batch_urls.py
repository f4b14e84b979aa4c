"""$batch request lines: the URL is everything between the method and the last HTTP/1.1."""

from __future__ import annotations

import httpx
import pytest
from dvclient import Dv, batch_body, batch_json_parts, error, http_part, send_batch

from crmsync.emulator import faults
from crmsync.emulator.batch import request_line


def test_request_line_keeps_spaces_in_the_url() -> None:
    assert request_line("GET leads?$filter=lastname eq 'x y' HTTP/1.1") == (
        "GET",
        "leads?$filter=lastname eq 'x y'",
    )
    assert request_line("patch leads(1) HTTP/1.1") == ("PATCH", "leads(1)")
    for bad in ("GET", "GET leads", "GET  HTTP/1.1", "GET leads HTTX"):
        with pytest.raises(faults.DataverseFault):
            request_line(bad)


async def test_filter_with_spaces_inside_a_batch_runs_that_filter(dv: Dv) -> None:
    await dv.create("leads", {"lastname": "wanted one"})
    await dv.create("leads", {"lastname": "other"})
    body = batch_body(
        "batch_1",
        [
            http_part("GET", "leads?$select=lastname&$filter=lastname eq 'wanted one'"),
            http_part("GET", "EntityDefinitions?$select=LogicalName&$filter=LogicalName eq 'lead'"),
        ],
    )
    r = await send_batch(dv, body)
    assert r.status_code == 200, r.text
    leads, tables = batch_json_parts(r.text)
    assert [row["lastname"] for row in leads["value"]] == ["wanted one"]
    assert [row["LogicalName"] for row in tables["value"]] == ["lead"]


async def test_a_part_without_a_request_line_is_refused(dv: Dv) -> None:
    part = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nGET\r\n\r\n"
    r = await send_batch(dv, batch_body("batch_1", [part]))
    assert error(r)[:2] == (400, "0x80048d19")


def lf_only(body: bytes) -> bytes:
    return body.replace(b"\r\n", b"\n")


async def test_lf_only_bodies_need_the_documented_trailing_line_feeds(dv: Dv) -> None:
    """web-api-client-errors.md: line endings other than CRLF make a part's body
    unreadable ("Stream was not readable") unless the body ends with two bare line
    endings. Which parts fail is inferred: those with a body; a GET still runs."""
    await dv.create("leads", {"lastname": "seen"})
    parts = [
        http_part("GET", "leads?$select=lastname"),
        http_part("POST", "leads", '{"lastname":"lf"}'),
    ]
    r = await dv.req(
        "POST",
        "$batch",
        {"Content-Type": "multipart/mixed; boundary=batch_1", "Prefer": "odata.continue-on-error"},
        content=lf_only(batch_body("batch_1", parts)),
    )
    assert r.status_code == 200 and "HTTP/1.1 200" in r.text
    assert "Stream was not readable." in r.text and "Entity :'leads'" in r.text
    # The article's workaround: two non-CRLF line endings at the end of the body.
    r = await send_batch(dv, lf_only(batch_body("batch_1", parts)) + b"\n")
    assert r.status_code == 200, r.text
    assert r.text.count("HTTP/1.1 ") == 2 and "HTTP/1.1 204" in r.text
    names = sorted(x["lastname"] for x in (await dv.get("leads?$select=lastname")).json()["value"])
    assert names == ["lf", "seen"]


async def test_part_urls_are_percent_decoded_like_top_level_paths(
    dv: Dv, client: httpx.AsyncClient
) -> None:
    await client.put("/_emulator/config", json={"alternate_keys": {"leads": [["emailaddress1"]]}})
    body = batch_body(
        "batch_1",
        [
            http_part("PATCH", "leads(emailaddress1='a%40b.c')", '{"lastname":"Key"}'),
            http_part("GET", "leads?$select=emailaddress1&$filter=lastname%20eq%20'Key'"),
        ],
    )
    r = await send_batch(dv, body)
    assert r.status_code == 200, r.text
    (found,) = batch_json_parts(r.text)
    assert [row["emailaddress1"] for row in found["value"]] == ["a@b.c"]
    assert (await dv.get("leads(emailaddress1='a@b.c')")).status_code == 200
