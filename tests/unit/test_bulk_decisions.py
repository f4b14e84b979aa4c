"""The push's bulk decisions without I/O: grouping, bisecting, sizing to the execution
budget, the read-back of versions, and the execution-time pacing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crmsync.domain import Direction, Operation
from crmsync.dynamics.limiter import (
    OTHERS_TTL,
    SMALL_RESERVE,
    ExecutionBudget,
    estimate_ms,
)
from crmsync.dynamics.writes import Op, Write
from crmsync.engine import bulk
from crmsync.engine.plan import Send
from crmsync.errors import RecordRejected
from crmsync.values import Entry, Others

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ME = "11111111-1111-1111-1111-111111111111"
OTHER = "22222222-2222-2222-2222-222222222222"


def crm_id(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def send(n: int, op: Op = "update", obj: str = "lead", if_match: str | None = 'W/"7"') -> Send:
    operation = {"update": Operation.UPDATE, "upsert": Operation.INSERT}.get(op, Operation.DELETE)
    entry = Entry(n, obj, Direction.TO_CRM, str(n), n, crm_id(n), operation, None, None, 1, 0, NOW)
    body = None if op == "delete" else {"lastname": f"L{n}"}
    write = Write(op, f"{obj}s", crm_id(n), body, if_match=if_match if op == "update" else None)
    return Send(entry, write, crm_id(n), {})


def test_inserts_and_updates_group_by_object_and_message_deletes_go_as_batch() -> None:
    sends = [send(1), send(2, "upsert"), send(3, "delete"), send(4, obj="contact")]
    sends += [send(5), send(6, "upsert"), send(7), send(8, "upsert")]
    sends += [send(9), send(10, "upsert"), send(11), send(13)]
    groups = bulk.group_sends(sends, bulk=True, max_records=100)
    shape = [(g.message, g.object, [s.entry.id for s in g.sends]) for g in groups]
    # The lone contact update, and the four lead inserts, are cheaper as $batch parts.
    assert shape == [
        (None, "", [3, 2, 6, 8, 10, 4]),
        ("UpdateMultiple", "lead", [1, 5, 7, 9, 11, 13]),
    ]
    assert bulk.BULK_MIN == 5


def test_batch_only_sends_everything_as_one_batch() -> None:
    sends = [send(1), send(2, "upsert"), send(3, "delete")]
    (group,) = bulk.group_sends(sends, bulk=False, max_records=100)
    assert group.message is None and [s.entry.id for s in group.sends] == [1, 2, 3]


def test_groups_are_chunked_to_the_bulk_size() -> None:
    groups = bulk.group_sends([send(i) for i in range(1, 8)], bulk=True, max_records=3)
    assert [len(g.sends) for g in groups] == [3, 3, 1]


def test_a_send_with_an_option_a_bulk_message_cannot_carry_goes_as_batch() -> None:
    s = send(1, "upsert")
    odd = Send(s.entry, Write("upsert", "leads", crm_id(1), {}, if_none_match="*"), crm_id(1), {})
    (group,) = bulk.group_sends([odd], bulk=True, max_records=10)
    assert group.message is None


def test_halves_split_in_order_and_a_single_send_cannot_split() -> None:
    group = bulk.Group("UpdateMultiple", "lead", tuple(send(i) for i in range(1, 6)))
    left, right = bulk.halves(group)
    assert [s.entry.id for s in left.sends] == [1, 2] and [s.entry.id for s in right.sends] == [
        3,
        4,
        5,
    ]
    with pytest.raises(ValueError):
        bulk.halves(bulk.Group("UpdateMultiple", "lead", (send(1),)))


TOO_LONG = (
    "A validation error occurred.  The length of the 'lastname' attribute of the 'lead' "
    "entity exceeded the maximum allowed length of '50'."
)


def long_send(n: int, length: int) -> Send:
    s = send(n)
    write = Write("update", "leads", crm_id(n), {"lastname": "x" * length}, if_match='W/"7"')
    return Send(s.entry, write, s.crm_id, {})


def test_a_refusal_naming_a_text_limit_takes_every_record_over_it_out() -> None:
    limits = bulk.TextLimits()
    group = bulk.Group(
        "UpdateMultiple", "lead", (send(1), long_send(2, 51), send(3), long_send(4, 80))
    )
    refused = RecordRejected("0x80044331", TOO_LONG, status=400)
    assert limits.learn(group, "lead", refused, now=0.0)
    over, rest = limits.split(group, "lead", now=1.0)
    assert [(s.entry.id, exc) for s, exc in over] == [(2, refused), (4, refused)]
    assert [s.entry.id for s in rest.sends] == [1, 3]
    assert rest.message == "UpdateMultiple" and rest.object == "lead"
    # Another table, or a record at the limit exactly, is not over it.
    assert limits.split(group, "contact", now=1.0)[0] == []
    at_limit = bulk.Group("UpdateMultiple", "lead", (long_send(5, 50),))
    assert limits.split(at_limit, "lead", now=1.0)[0] == []


def test_a_limit_is_trusted_for_a_while_then_learnt_again() -> None:
    limits = bulk.TextLimits()
    group = bulk.Group("UpdateMultiple", "lead", (send(1), long_send(2, 51)))
    assert limits.learn(group, "lead", RecordRejected("0x80044331", TOO_LONG), now=0.0)
    assert len(limits.split(group, "lead", now=bulk.LIMIT_SECONDS - 1)[0]) == 1
    assert limits.split(group, "lead", now=bulk.LIMIT_SECONDS + 1) == ([], group)


def test_a_refusal_that_names_no_limit_or_splits_nothing_is_left_to_halving() -> None:
    limits = bulk.TextLimits()
    clean = bulk.Group("UpdateMultiple", "lead", (send(1), send(2)))
    other = RecordRejected("0x80040217", "account With Id = 1 Does Not Exist", status=404)
    assert not limits.learn(clean, "lead", other, now=0.0)
    # Names a limit no record of the request is over (counted in characters): halving.
    assert not limits.learn(clean, "lead", RecordRejected("0x80044331", TOO_LONG), now=0.0)
    # Names another table's limit.
    assert not limits.learn(
        bulk.Group("UpdateMultiple", "lead", (long_send(2, 51),)),
        "contact",
        RecordRejected("0x80044331", TOO_LONG),
        now=0.0,
    )
    assert limits.known == {}


def test_bulk_size_keeps_one_request_within_its_share_of_the_budget() -> None:
    # 1,200,000 ms x 5% = 60,000 ms: room for 3,108 records, capped at the claim size.
    assert bulk.bulk_size(1_200_000, 100, 19.27, share=0.05, maximum=1000) == 1000
    # A small budget: (40,000 x 5% - 100) / 19.27 = 98 records.
    assert bulk.bulk_size(40_000, 100, 19.27, share=0.05, maximum=1000) == 98
    assert bulk.bulk_size(100, 100, 19.27, share=0.05, maximum=1000) == 1


def test_stale_before_finds_updates_changed_in_dynamics_since_their_base() -> None:
    sends = [send(1), send(2), send(3, if_match="*"), send(4), send(5, "upsert")]
    current = {
        crm_id(1): {"@odata.etag": 'W/"7"'},
        crm_id(2): {"@odata.etag": 'W/"9"'},  # changed since
        crm_id(3): {"@odata.etag": 'W/"9"'},  # no base: nothing to compare
        crm_id(5): {"@odata.etag": 'W/"9"'},  # an insert
    }  # 4 is absent: left to the bulk message, which fails for it alone
    assert bulk.stale_before(sends, current) == {2}


def test_etag_after_takes_the_read_back_only_when_crmsync_wrote_last() -> None:
    mine = {crm_id(1): {"@odata.etag": 'W/"8"', "_modifiedby_value": ME.upper()}}
    theirs = {crm_id(1): {"@odata.etag": 'W/"9"', "_modifiedby_value": OTHER}}
    assert bulk.etag_after(send(1), mine, ME) == 'W/"8"'
    # Someone changed it after the write: keep the old base, so the next update is
    # refused (412) and the change pulled, never taken for an echo.
    assert bulk.etag_after(send(1), theirs, ME) == 'W/"7"'
    assert bulk.etag_after(send(1, "upsert"), theirs, ME) is None
    assert bulk.etag_after(send(1), {}, ME) == 'W/"7"'
    assert bulk.etag_after(send(1), mine, None) == 'W/"7"'


def test_estimates_follow_dataverse_charges() -> None:
    assert estimate_ms("UpdateMultiple", 1000) == pytest.approx(100 + 19_270)
    assert estimate_ms("batch", 100) == pytest.approx(100 + 149 * 100)
    assert estimate_ms("read", 400) == pytest.approx(100 + 124)
    assert estimate_ms("single") == 149


def test_budget_waits_until_the_window_slides_past_enough_spending() -> None:
    b = ExecutionBudget(budget_ms=10_000, window_s=10, share=1.0)
    b.charge(0.0, 4_000)
    b.charge(2.0, 4_000)
    assert b.wait(3.0, 1_000) == 0.0  # 9,000 of 10,000 with the reserve: fits (small)
    # A bulk-sized request keeps the reserve: 8,000 + 2,000 > 9,000 until t=10.
    assert b.wait(3.0, 2_000) == pytest.approx(7.0)
    assert b.wait(10.0, 2_000) == 0.0
    assert b.spent(12.5) == 0.0


def test_a_request_larger_than_the_budget_goes_alone_into_an_empty_window() -> None:
    b = ExecutionBudget(budget_ms=1_000, window_s=10, share=1.0)
    assert b.wait(0.0, 5_000) == 0.0
    b.charge(0.0, 5_000)
    assert b.wait(1.0, 5_000) == pytest.approx(9.0)


def test_what_the_other_processes_spent_is_left_to_them() -> None:
    b = ExecutionBudget(budget_ms=10_000, window_s=10, share=1.0)
    b.charge(0.0, 3_000)
    assert b.wait(1.0, 2_000) == 0.0  # alone: 3,000 + 2,000 of 10,000
    b.hear(Others(processes=1, spent_ms=5_000), 1.0)  # another process spent 5,000
    # 3,000 + 5,000 + 2,000 > 9,700 (the reserve kept): ours leaves the window at 10.
    assert b.wait(1.0, 2_000) == pytest.approx(9.0)
    assert b.wait(1.0, 500) == 0.0  # a small one still fits (it may use the reserve)
    # Not heard again for OTHERS_TTL (a store that stopped answering): forgotten.
    assert b.others(1.0 + OTHERS_TTL + 0.1) == Others()
    assert b.wait(1.0 + OTHERS_TTL + 0.1, 2_000) == 0.0


def test_a_process_keeps_its_part_however_much_the_others_spent() -> None:
    """One process filled the window: another still gets 1 / processes of it, so none
    can keep another out for good (its own share never recovers without sending)."""
    late = ExecutionBudget(budget_ms=10_000, window_s=10, share=1.0)
    late.hear(Others(processes=1, spent_ms=9_800), 0.0)
    assert late.limit(0.0) == pytest.approx(5_000)
    assert late.wait(0.0, 149.0) == 0.0  # an edit goes at once
    assert late.wait(0.0, 2_000) == 0.0
    late.charge(0.0, 4_000)
    assert late.wait(0.0, 2_000) == pytest.approx(10.0)  # beyond its part: waits its own
    # Three others: a quarter each.
    many = ExecutionBudget(budget_ms=10_000, window_s=10, share=1.0)
    many.hear(Others(processes=3, spent_ms=10_000), 0.0)
    assert many.limit(0.0) == pytest.approx(2_500)


def test_the_lowest_share_of_any_process_paces_them_all() -> None:
    """An execution-time 429 cut one process's share: the estimate was low for all."""
    b = ExecutionBudget(budget_ms=10_000, window_s=10, share=0.98)
    b.hear(Others(processes=1, spent_ms=0.0, share=0.5), 0.0)
    assert b.limit(0.0) == pytest.approx(5_000)
    b.hear(Others(processes=1, spent_ms=0.0, share=0.99), 0.0)
    assert b.limit(0.0) == pytest.approx(9_800)  # its own is lower


def test_small_requests_use_the_reserve_bulk_requests_leave() -> None:
    b = ExecutionBudget(budget_ms=100_000, window_s=10, share=1.0)
    b.charge(0.0, 100_000 * (1 - SMALL_RESERVE))
    assert b.wait(1.0, estimate_ms("UpdateMultiple", 100)) > 0
    assert b.wait(1.0, estimate_ms("UpdateMultiple", 1)) == 0.0


def test_the_reserve_grows_with_what_small_requests_spent_over_the_window() -> None:
    b = ExecutionBudget(budget_ms=100_000, window_s=10, share=1.0)
    assert b.reserve(0.0) == SMALL_RESERVE * 100_000
    for i in range(40):  # edits: 40 small requests of 250 ms = 10% of the budget
        b.charge(i * 0.1, 250.0)
    assert b.reserve(4.0) == 1.5 * 10_000
    b.charge(4.0, 70_000.0)  # a bulk backlog took 70%: 80% spent, 85% is the bulk limit
    assert b.wait(4.0, estimate_ms("UpdateMultiple", 100)) == 0.0  # 2,027 ms: 82%
    # 7,808 ms: 88%, which the fixed 3% reserve (97% for bulk) would have let through.
    assert b.wait(4.0, estimate_ms("UpdateMultiple", 400)) > 0
    assert b.wait(4.0, estimate_ms("UpdateMultiple", 1)) == 0.0  # small: up to the share
    # The small spending slides out of the window, and the reserve with it.
    assert b.reserve(14.5) == SMALL_RESERVE * 100_000
    # Capped: small requests cannot starve the bulk of its budget.
    c = ExecutionBudget(budget_ms=100_000, window_s=10, share=1.0)
    for i in range(200):
        c.charge(0.0, 1_000.0)
    assert c.reserve(1.0) == 0.2 * 100_000


def test_a_bulk_requests_read_backs_are_paced_with_it_and_leave_the_reserve_alone() -> None:
    b = ExecutionBudget(budget_ms=100_000, window_s=10, share=1.0)
    for i in range(40):  # a backlog's read-backs: cheap, but part of the bulk work
        b.charge(i * 0.1, 250.0, bulk=True)
    assert b.reserve(4.0) == SMALL_RESERVE * 100_000
    b.charge(4.0, 87_000.0)  # 97%: the bulk limit
    assert b.wait(4.0, 250.0, bulk=True) > 0  # a read-back waits with its request
    assert b.wait(4.0, 250.0) == 0.0  # an edit's request uses the reserve


def test_an_execution_time_429_lowers_the_share_and_successes_restore_it() -> None:
    b = ExecutionBudget(budget_ms=1_000, window_s=10)
    b.on_throttle(0.0)
    b.on_throttle(0.5)  # the same burst: one cut
    assert b.share == pytest.approx(0.98 * 0.9)
    for _ in range(100):
        b.on_success()
    assert b.share == pytest.approx(0.98)
    for t in range(40):
        b.on_throttle(float(t))
    assert b.share == pytest.approx(0.3)


def test_a_reservation_slides_to_when_the_answer_came() -> None:
    b = ExecutionBudget(budget_ms=10_000, window_s=10, share=1.0)
    handle = b.charge(0.0, 9_000)
    b.finished(handle, 4.0)  # Dataverse counts it from the end of the request
    assert b.spent(11.0) == 9_000
    assert b.wait(11.0, 2_000) == pytest.approx(3.0)
    assert b.spent(14.0) == 0.0


def test_a_request_dataverse_did_not_run_gives_its_budget_back() -> None:
    """A 429, a gateway's 502/503/504 or no answer costs no execution time: an outage
    must not use the budget up and hold the sending back for a whole window."""
    b = ExecutionBudget(budget_ms=1_000, window_s=10, share=1.0)
    held = b.charge(0.0, 900)
    assert b.wait(1.0, 200) > 0
    b.refund(held)
    assert b.spent(1.0) == 0 and b.wait(1.0, 200) == 0
    b.refund(held)  # twice is once
    assert b.spent(1.0) == 0


async def test_the_limiter_refunds_a_slot_marked_not_executed() -> None:
    from crmsync.dynamics.limiter import Limiter

    now = [0.0]
    limiter = Limiter(
        budget=ExecutionBudget(budget_ms=1_000, window_s=10, share=1.0), clock=lambda: now[0]
    )
    async with limiter.slot(900) as reservation:
        reservation.refund()
    assert limiter.budget.spent(now[0]) == 0
    async with limiter.slot(900):
        pass
    assert limiter.budget.spent(now[0]) == 900


async def test_a_read_is_amended_to_the_rows_its_answer_held() -> None:
    """A page of changes is charged per row: the estimate made before sending (one row)
    is set to what came back, in place, also after the slot is left; once out of the
    window, or refunded, an amendment changes nothing."""
    from crmsync.dynamics.limiter import Limiter

    now = [0.0]
    limiter = Limiter(
        budget=ExecutionBudget(budget_ms=10_000, window_s=10, share=1.0), clock=lambda: now[0]
    )
    async with limiter.slot(estimate_ms("read", 1)) as first:
        now[0] = 1.0  # answered at 1 s: counted from then
    now[0] = 2.0
    async with limiter.slot(500, bulk=True) as second:
        pass
    first.amend(estimate_ms("read", 5_000))
    assert limiter.budget.spent(2.0) == pytest.approx(estimate_ms("read", 5_000) + 500)
    second.amend(200)  # lower too: the answer is the measure
    assert limiter.budget.spent(2.0) == pytest.approx(estimate_ms("read", 5_000) + 200)
    assert limiter.budget.spent(11.5) == pytest.approx(200)  # the first slid out at 11 s
    first.amend(9_999)
    assert limiter.budget.spent(11.5) == pytest.approx(200)
    now[0] = 11.5
    async with limiter.slot(300) as refused:
        refused.refund()
    refused.amend(5_000)
    assert limiter.budget.spent(11.5) == pytest.approx(200)
    assert limiter.budget.spent(12.5) == 0.0  # nothing left over from the amendments
