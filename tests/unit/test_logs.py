"""``crmsync.logs``: the formats an operator reads, and secrets blanked out of both."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest

from crmsync import logs


@pytest.fixture
def configured() -> Iterator[None]:
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger("crmsync").level)
    yield
    for handler in [h for h in root.handlers if getattr(h, "crmsync", False)]:
        root.removeHandler(handler)
    root.handlers[:] = before[0]
    root.setLevel(before[1])
    logging.getLogger("crmsync").setLevel(before[2])


def test_text_lines_have_time_level_logger_message_and_fields(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("text")
    logging.getLogger("crmsync.test").info(
        "worker started", extra={"event": "worker.start", "worker": "vm:1", "note": "two words"}
    )
    logging.getLogger("httpx").info("HTTP Request: GET ...")  # other libraries: WARNING up
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO crmsync\.test: worker started "
        r'event=worker\.start worker=vm:1 note="two words"',
        line,
    ), line


def test_json_lines_and_secrets_redacted(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("json", secrets=["s3cret-value-1"])
    logs.add_secrets(["another-secret-2", "short"])
    log = logging.getLogger("crmsync.test")
    log.warning(
        "token s3cret-value-1 refused", extra={"event": "x.y", "url": "u?k=another-secret-2"}
    )
    log.warning("a short word stays", extra={"event": "x.z"})
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["message"] == "token [redacted] refused" and first["url"] == "u?k=[redacted]"
    assert (
        first["level"] == "WARNING"
        and first["event"] == "x.y"
        and first["logger"] == "crmsync.test"
    )
    assert first["time"].endswith("Z")
    assert second["message"] == "a short word stays"  # too short to be taken for a secret


def test_conditions_are_logged_when_they_begin_and_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="crmsync.test")
    conditions = logs.Conditions(logging.getLogger("crmsync.test"))
    assert conditions.begin("store.unreachable", "down (refused)", event="store.unreachable", now=1)
    assert not conditions.begin("store.unreachable", "down again", event="store.unreachable", now=2)
    conditions.end_all("{name}: over", now=31)
    conditions.end_all("{name}: over", now=32)  # nothing on: nothing said
    assert [(r.levelname, r.getMessage(), r.event) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("WARNING", "down (refused)", "store.unreachable"),
        ("INFO", "store.unreachable: over", "store.unreachable.over"),
    ]
    assert caplog.records[1].seconds == 30  # type: ignore[attr-defined]
