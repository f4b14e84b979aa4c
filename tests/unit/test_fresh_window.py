"""The fresh lane's window: the last seconds, and what became due while the lane was
held up, so that no edit ages past it into the back of a bulk backlog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crmsync.engine.push import FRESH_CATCHUP_SECONDS, FRESH_SECONDS, FreshWindow

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_lane_held_up_catches_up_on_what_became_due_meanwhile() -> None:
    w = FreshWindow()
    assert w.since(at(0)) == at(-FRESH_SECONDS)  # the first claim: the last seconds
    w.claimed(w.since(at(0)), at(0), full=False)
    assert w.since(at(0.25)) == at(-FRESH_SECONDS)  # polling: the window overlaps
    # Held up 30 s (a 429's Retry-After): an edit due at 2 s is still in the window.
    assert w.since(at(30)) == at(-FRESH_SECONDS) < at(2)
    w.claimed(w.since(at(30)), at(30), full=False)
    assert w.since(at(30.25)) == at(30 - FRESH_SECONDS)


def test_a_full_claim_keeps_its_start_for_what_it_left() -> None:
    w = FreshWindow()
    since = w.since(at(0))
    w.claimed(since, at(0), full=True)  # took the newest 50: older ones are left
    assert w.since(at(3)) == since
    w.claimed(w.since(at(3)), at(3), full=False)
    assert w.since(at(3.25)) == at(3 - FRESH_SECONDS)


def test_the_catch_up_is_bounded_and_forgotten_while_the_lanes_keep_up() -> None:
    w = FreshWindow()
    w.claimed(w.since(at(0)), at(0), full=False)
    later = 10 * FRESH_CATCHUP_SECONDS
    assert w.since(at(later)) == at(later - FRESH_CATCHUP_SECONDS)
    w.reset()
    assert w.since(at(later)) == at(later - FRESH_SECONDS)
