"""$batch request lines: the URL is everything between the method and the last HTTP/1.1."""

from __future__ import annotations

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
