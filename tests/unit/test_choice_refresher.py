"""``engine.choices.Refresher``: a running worker's options read again, on a fake clock
and a fake Dynamics (its metadata answers), the store's side faked."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from crmsync.domain import ObjectSpec
from crmsync.engine import choices
from crmsync.errors import Refusal, Retriable
from crmsync.mapping import build
from crmsync.mapping.options import with_options

RATING = {"attribute": "leadqualitycode", "type": "choice", "labels": True}
START = ((1, "Hot"), (2, "Warm"), (3, "Cold"))


class Dynamics:
    """Answers ``read_choice_options``'s request with ``options``, or raises ``fault``."""

    def __init__(self) -> None:
        self.options: tuple[tuple[int, str], ...] = START
        self.fault: Exception | None = None
        self.paths: list[str] = []

    async def get_json(self, path: str) -> dict[str, Any]:
        self.paths.append(path)
        if self.fault is not None:
            raise self.fault
        options = [
            {"Value": v, "Label": {"UserLocalizedLabel": {"Label": label}}}
            for v, label in self.options
        ]
        return {"value": [{"LogicalName": "leadqualitycode", "OptionSet": {"Options": options}}]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[tuple[ObjectSpec, dict[str, Any]]]:
    """What the refresher stored (the spec, the fields whose errors it retries)."""
    calls: list[tuple[ObjectSpec, dict[str, Any]]] = []
    monkeypatch.setattr(
        choices, "_save", lambda engine, spec, retry=None: calls.append((spec, dict(retry or {})))
    )
    monkeypatch.setattr(choices, "_report", lambda engine, spec: None)
    return calls


def _specs() -> dict[str, ObjectSpec]:
    specs = build({"lead": {"fields": {"rating": RATING}}})
    resolved, problems = with_options(specs, {"lead": {"leadqualitycode": START}})
    assert problems == {}
    return resolved


def _refresher(dynamics: Dynamics, clock: Clock, laid: list[ObjectSpec]) -> choices.Refresher:
    return choices.Refresher(
        None,  # type: ignore[arg-type]
        dynamics,  # type: ignore[arg-type]
        _specs(),
        laid.append,
        refresh_seconds=600.0,
        reread_seconds=60.0,
        clock=clock,
    )


def _choices(spec: ObjectSpec) -> tuple[tuple[str, int], ...]:
    return spec.field_specs["rating"].choices


def test_only_the_objects_with_options_read_are_covered(saved: list[Any]) -> None:
    refresher = _refresher(Dynamics(), Clock(), [])
    assert refresher.covers("lead")
    assert not refresher.covers("contact")
    assert refresher.reads == {"lead": 0}


async def test_a_miss_reads_again_at_most_once_per_reread_seconds_per_table(
    saved: list[Any],
) -> None:
    dynamics, clock, laid = Dynamics(), Clock(), []
    refresher = _refresher(dynamics, clock, laid)
    refresher.reread_seconds = 60.0
    # Read at start (the refresher's start counts as a read): none within the minute.
    clock.now += 59.0
    await refresher.reread("lead")
    assert refresher.reads == {"lead": 0} and dynamics.paths == []
    clock.now += 1.0
    await refresher.reread("lead")
    await refresher.reread("lead")  # the same moment: read already
    assert refresher.reads == {"lead": 1} and len(dynamics.paths) == 1
    assert "EntityDefinitions(LogicalName='lead')" in dynamics.paths[0]
    clock.now += 59.9
    await refresher.reread("lead")
    assert refresher.reads == {"lead": 1}
    clock.now += 0.1
    await refresher.reread("lead")
    assert refresher.reads == {"lead": 2}
    await refresher.reread("contact")  # not covered: nothing read
    assert len(dynamics.paths) == 2
    # Options unchanged: nothing laid in, nothing retried; each read is stored.
    assert laid == []
    assert [retry for _, retry in saved] == [{}, {}]


async def test_concurrent_misses_read_once(saved: list[Any]) -> None:
    dynamics, clock = Dynamics(), Clock()
    refresher = _refresher(dynamics, clock, [])
    clock.now += refresher.reread_seconds
    await asyncio.gather(*(refresher.reread("lead") for _ in range(5)))
    assert refresher.reads == {"lead": 1} and len(dynamics.paths) == 1


async def test_a_change_is_laid_in_and_its_fields_errors_retried(saved: list[Any]) -> None:
    dynamics, clock, laid = Dynamics(), Clock(), []
    refresher = _refresher(dynamics, clock, laid)
    dynamics.options = (*START, (4, "Frozen"))
    clock.now += refresher.reread_seconds
    before = clock.now
    await refresher.reread("lead")
    [fresh] = laid
    assert _choices(fresh) == (("Hot", 1), ("Warm", 2), ("Cold", 3), ("Frozen", 4))
    assert refresher.specs["lead"] is fresh
    assert refresher.changed_since("lead", before)
    assert not refresher.changed_since("lead", before + 0.1)
    assert not refresher.changed_since("contact", 0.0)
    [(stored, retry)] = saved
    assert stored is fresh and retry == {"rating": True}
    # Read again without a change: nothing more laid in or retried.
    clock.now += refresher.reread_seconds
    await refresher.reread("lead")
    assert len(laid) == 1 and saved[-1][1] == {}


async def test_an_outage_keeps_the_options_in_force_and_is_read_again_later(
    saved: list[Any],
) -> None:
    dynamics, clock, laid = Dynamics(), Clock(), []
    refresher = _refresher(dynamics, clock, laid)
    dynamics.fault = Retriable("503 Service Unavailable", status=503)
    clock.now += refresher.reread_seconds
    await refresher.reread("lead")  # survived: nothing raised
    assert refresher.reads == {"lead": 1}
    assert _choices(refresher.specs["lead"]) == (("Hot", 1), ("Warm", 2), ("Cold", 3))
    assert laid == [] and saved == []  # nothing stored, nothing retried
    dynamics.fault = Refusal("0x80040220", "no metadata access", status=403)
    clock.now += refresher.reread_seconds
    await refresher.reread("lead")
    assert refresher.reads == {"lead": 2} and saved == []
    # Dynamics back: the next read that is due takes the change.
    dynamics.fault = None
    dynamics.options = ((1, "Hot"),)
    await refresher.reread("lead")  # within reread_seconds of the failed read
    assert refresher.reads == {"lead": 2}
    clock.now += refresher.reread_seconds
    await refresher.reread("lead")
    assert [_choices(s) for s in laid] == [(("Hot", 1),)]
    assert saved[-1][1] == {"rating": True}


async def test_run_reads_every_table_again_each_refresh_seconds(saved: list[Any]) -> None:
    """On the real clock (``run`` waits in real time), with a short period."""
    dynamics, laid = Dynamics(), []
    refresher = choices.Refresher(
        None,  # type: ignore[arg-type]
        dynamics,  # type: ignore[arg-type]
        _specs(),
        laid.append,
        refresh_seconds=0.5,
        reread_seconds=3600.0,  # the periodic read is not rate-limited by it
    )
    started = time.monotonic()
    stopping = asyncio.Event()
    task = asyncio.create_task(refresher.run(stopping))
    try:
        dynamics.options = (*START, (4, "Frozen"))
        await asyncio.sleep(0.2)
        if time.monotonic() - started < 0.45:
            assert refresher.reads == {"lead": 0}
        await _until(lambda: refresher.reads == {"lead": 1})
        assert time.monotonic() - started >= 0.5
        assert [_choices(s)[-1] for s in laid] == [("Frozen", 4)]
        assert saved[-1][1] == {"rating": True}
        # A failing periodic read does not end the loop.
        dynamics.fault = Retriable("timed out")
        await _until(lambda: refresher.reads == {"lead": 2})
        dynamics.fault = None
        await _until(lambda: refresher.reads == {"lead": 3})
        assert not task.done()
    finally:
        stopping.set()
        await asyncio.wait_for(task, 5)
    assert len(laid) == 1  # options unchanged after the first change


async def test_the_next_periodic_read_is_due_refresh_seconds_after_the_last_read(
    saved: list[Any],
) -> None:
    """A read made for a miss postpones the periodic one: one read, not two."""
    dynamics, clock = Dynamics(), Clock()
    refresher = _refresher(dynamics, clock, [])
    refresher.refresh_seconds = 600.0
    clock.now += 100.0
    assert refresher._next_refresh() == pytest.approx(500.0)
    await refresher.reread("lead")
    assert refresher._next_refresh() == pytest.approx(600.0)
    clock.now += 700.0
    assert refresher._next_refresh() == pytest.approx(0.05)  # overdue: at once


async def _until(condition: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "not reached in time"
        await asyncio.sleep(0.01)
