"""How many requests may be in flight, and until when everyone must wait.

Dataverse's service protection (api-limits.md) allows 52 concurrent requests per user and
web server and answers 429 with ``Retry-After`` when a limit is passed; the response header
``x-ms-dop-hint`` recommends a degree of parallelism (send-parallel-requests). Microsoft's
advice is to "let the server tell you" (optimize-performance-create-update).

``AdaptiveLimit`` (additive increase, multiplicative decrease) and ``ThrottleGate`` are pure
state machines that take the time as an argument. ``Limiter`` is the small async wrapper a
client shares across all its workers, so a 429 seen by one pauses every request made with
that credential in this process. Other processes using the same credential learn of it
through listeners (``on_throttle``) and close this gate with ``hold``; the engine wires
both to the store (``engine/throttle.py``), so this package needs no store.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from crmsync.values import Others

DATAVERSE_MAX_CONCURRENCY = 52


@dataclass
class AdaptiveLimit:
    """AIMD concurrency: +1 slot per full window of successes, halve on a throttle."""

    ceiling: int = DATAVERSE_MAX_CONCURRENCY
    current: float = float(DATAVERSE_MAX_CONCURRENCY)
    floor: int = 1
    decrease_factor: float = 0.5
    # Throttles from one burst arrive together; only the first of them should cut.
    cooldown: float = 1.0
    server_hint: int | None = None
    _last_decrease: float = float("-inf")

    def __post_init__(self) -> None:
        self.ceiling = max(self.floor, min(self.ceiling, DATAVERSE_MAX_CONCURRENCY))
        self.current = float(max(self.floor, min(self.current, self.ceiling)))

    @property
    def cap(self) -> int:
        """The highest the limit may go: our ceiling, lowered by the server's hint."""
        if self.server_hint is not None and self.server_hint >= 1:
            return min(self.ceiling, self.server_hint)
        return self.ceiling

    @property
    def slots(self) -> int:
        return max(self.floor, min(int(self.current), self.cap))

    def on_success(self, dop_hint: int | None = None) -> None:
        if dop_hint is not None:
            self.server_hint = dop_hint
        self.current = min(float(self.cap), self.current + 1.0 / max(self.current, 1.0))

    def on_throttle(self, now: float) -> None:
        if now - self._last_decrease < self.cooldown:
            return
        self._last_decrease = now
        self.current = max(float(self.floor), min(self.current, self.cap) * self.decrease_factor)


@dataclass
class ThrottleGate:
    """The shared "throttled until" instant; it only ever moves later."""

    until: float = float("-inf")

    def close_for(self, now: float, seconds: float) -> None:
        self.until = max(self.until, now + max(0.0, seconds))

    def wait(self, now: float) -> float:
        """Seconds still to wait before a request may be sent (0 when open)."""
        return max(0.0, self.until - now)


# What Dataverse charges, in ms (docs/emulator.md "Execution time": published 1,000-record
# runs; overheads inferred): the client's own estimate of a request's execution time.
# Wall time is no measure of it (it includes queueing at a busy server); an execution-time
# 429 tells the estimate was low (``ExecutionBudget.on_throttle``).
COST_MS = {"single": 149.0, "batch": 100.0, "multiple": 100.0, "read_page": 100.0}
PER_RECORD_MS = {"UpsertMultiple": 19.27, "UpdateMultiple": 19.27, "CreateMultiple": 10.9}
READ_ROW_MS = 0.31
# Requests this cheap or cheaper may use the last ``SMALL_RESERVE`` of the budget, which
# bulk requests leave free: an interactive edit never waits behind a bulk backlog. The
# reserve grows to ``SMALL_HEADROOM`` times what small requests spent over the window
# (edits at 1 a second spend ~250 ms a second, more than 3% of Dataverse's 4,000), up
# to ``SMALL_RESERVE_MAX``.
SMALL_MS = 1_500.0  # a fresh lane's claim of 50 as UpdateMultiple: ~1,060 ms
SMALL_RESERVE = 0.03
SMALL_HEADROOM = 1.5
SMALL_RESERVE_MAX = 0.2
# How long what the other processes of the same user spent (``ExecutionBudget.hear``)
# is believed without being heard again: several of the store polls that carry it.
OTHERS_TTL = 5.0


def estimate_ms(kind: str, records: int = 1) -> float:
    """Execution time Dataverse is expected to charge: ``kind`` a bulk message name,
    "batch" (records = parts, each a single write), "read" (records = rows) or "single"."""
    if kind in PER_RECORD_MS:
        return COST_MS["multiple"] + PER_RECORD_MS[kind] * records
    if kind == "batch":
        return COST_MS["batch"] + COST_MS["single"] * records
    if kind == "read":
        return COST_MS["read_page"] + READ_ROW_MS * records
    return COST_MS["single"]


@dataclass
class Reservation:
    """A slot's share of the execution budget: ``refund()`` gives it back (the request was
    not executed); ``amend(ms)``, also after the slot is left, sets what the answer showed
    it cost (a read is charged per row, and only the page tells how many came)."""

    refunded: bool = False
    budget: ExecutionBudget | None = None
    entry: list[float] | None = None

    def refund(self) -> None:
        self.refunded = True

    def amend(self, ms: float) -> None:
        if self.budget is not None and not self.refunded:
            self.budget.amend(self.entry, ms)


@dataclass
class ExecutionBudget:
    """The execution time this user's requests spent over the sliding window, as the
    client estimates it, and how long a request must wait to stay under ``share`` of the
    budget. An execution-time 429 lowers ``share`` (the estimate was too low); successes
    raise it back slowly. Never fed by the x-ms-ratelimit-* headers (Microsoft: debug only).
    """

    budget_ms: float = 1_200_000.0
    window_s: float = 300.0
    share: float = 0.98
    top: float = 0.98
    floor: float = 0.3

    cooldown: float = 1.0  # 429s of one burst arrive together: one cut for them all

    def __post_init__(self) -> None:
        self._spent: deque[list[float]] = deque()  # [charged at, ms, small], oldest first
        self._total = 0.0
        self._small = 0.0  # of which small requests' (ms <= SMALL_MS)
        self._last_cut = float("-inf")
        self._others = Others()  # the other processes of this user, last heard
        self._heard_at = float("-inf")

    def hear(self, others: Others, now: float) -> None:
        """The other processes sharing this user, as the store last told it
        (``engine.throttle.SharedThrottle``): Dataverse's budget is the user's, not the
        process's. Forgotten ``OTHERS_TTL`` seconds after it was heard, so a store that
        stops answering never holds this process for long."""
        self._others, self._heard_at = others, now

    def others(self, now: float) -> Others:
        return self._others if now - self._heard_at <= OTHERS_TTL else Others()

    def limit(self, now: float) -> float:
        """The user's budget this process paces to: ``share`` of it, the lowest share of
        any live process (an execution-time 429 told one of them the estimate was low:
        it was low for all), less what the others spent, but never less than
        ``1 / processes`` of it: a process that finds the window full of the others'
        spending still gets its part (once, the window may hold more than the budget
        and the next 429 pauses them all), and none can keep another out for good."""
        others = self.others(now)
        total = self.budget_ms * min(self.share, others.share)
        return total - min(others.spent_ms, total * others.processes / (others.processes + 1))

    def spent(self, now: float) -> float:
        while self._spent and self._spent[0][0] <= now - self.window_s:
            self._drop(self._spent.popleft())
        if not self._spent:
            self._total = self._small = 0.0  # no float drift left over from the sums
        return max(0.0, self._total)

    def _drop(self, entry: list[float]) -> None:
        self._total -= entry[1]
        self._small -= entry[1] * entry[2]

    def reserve(self, now: float) -> float:
        """The budget bulk requests leave to small ones: ``SMALL_RESERVE`` of it, or
        ``SMALL_HEADROOM`` times what small requests spent over the window if more."""
        self.spent(now)
        wanted = max(SMALL_RESERVE * self.budget_ms, SMALL_HEADROOM * max(0.0, self._small))
        return min(wanted, SMALL_RESERVE_MAX * self.budget_ms)

    def charge(self, now: float, ms: float, *, bulk: bool = False) -> list[float] | None:
        """Reserve ``ms`` at ``now``; the handle lets ``finished`` move it later.
        ``bulk``: part of a bulk request's work (its read-backs), however cheap."""
        if ms <= 0:
            return None
        small = 1.0 if ms <= SMALL_MS and not bulk else 0.0
        entry = [now, ms, small]
        self._spent.append(entry)
        self._total += ms
        self._small += ms * small
        return entry

    def finished(self, entry: list[float] | None, now: float) -> None:
        """The request answered: Dataverse counts its time from the end of it, so the
        reservation slides to ``now`` (else the window frees it too early)."""
        if entry is None or entry[0] >= now:
            return
        try:
            self._spent.remove(entry)
        except ValueError:
            return  # already out of the window
        entry[0] = now
        self._spent.append(entry)

    def amend(self, entry: list[float] | None, ms: float) -> None:
        """The request cost ``ms`` after all (known from its answer); it keeps its place
        in the window. Nothing happens once it has slid out."""
        if entry is None:
            return
        for held in reversed(self._spent):  # a recent entry: found near the end
            if held is entry:
                delta = max(0.0, ms) - entry[1]
                entry[1] += delta
                self._total += delta
                self._small += delta * entry[2]
                return

    def refund(self, entry: list[float] | None) -> None:
        """The request was not executed (throttled, the service unavailable, no answer):
        Dataverse charged nothing for it, so neither does the estimate."""
        if entry is None:
            return
        try:
            self._spent.remove(entry)
        except ValueError:
            return  # already out of the window
        self._drop(entry)

    def wait(self, now: float, ms: float, *, bulk: bool = False) -> float:
        """Seconds until a request of ``ms`` fits (0 now). Bulk-sized requests leave the
        ``reserve`` free; one larger than the limit goes alone into a window empty of
        this process's own spending. The other processes' spending is in ``limit``; the
        caller looks again within a second (``Limiter.wait_budget``), so theirs leaving
        the window is seen too."""
        spent = self.spent(now)
        small = ms <= SMALL_MS and not bulk
        limit = self.limit(now) - (0.0 if small else self.reserve(now))
        if spent + ms <= limit or spent == 0:
            return 0.0
        released = 0.0
        for at, cost, _small in self._spent:
            released += cost
            if spent - released + ms <= limit:
                return max(0.0, at + self.window_s - now)
        return max(0.0, self._spent[-1][0] + self.window_s - now)

    def on_throttle(self, now: float) -> None:
        if now - self._last_cut < self.cooldown:
            return
        self._last_cut = now
        self.share = max(self.floor, self.share * 0.9)

    def on_success(self) -> None:
        self.share = min(self.top, self.share + 0.01)


@dataclass(frozen=True)
class RateLimitRemaining:
    """What a response said is left of the user's service-protection window: requests
    (``x-ms-ratelimit-burst-remaining-xrm-requests``) and execution time in seconds
    (``x-ms-ratelimit-time-remaining-xrm-requests``, sent as ``1,199.46``). Microsoft:
    "Don't depend on these values to control how many requests you send. They're intended
    for debugging purposes." (api-limits.md): for operators, not for pacing."""

    requests: int | None
    execution_s: float | None


def parse_ratelimit(headers: Mapping[str, str]) -> RateLimitRemaining | None:
    """The ``x-ms-ratelimit-*`` headers of a response, or None if it carries neither."""
    requests = _number(headers.get("x-ms-ratelimit-burst-remaining-xrm-requests"))
    execution = _number(headers.get("x-ms-ratelimit-time-remaining-xrm-requests"))
    if requests is None and execution is None:
        return None
    return RateLimitRemaining(None if requests is None else int(requests), execution)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip().replace(",", ""))  # "1,199.46": en-US grouping
    except ValueError:
        return None
    return number if number >= 0 and number != float("inf") else None


def parse_dop_hint(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        hint = int(value.strip())
    except ValueError:
        return None
    return hint if hint >= 1 else None


class Limiter:
    """Async slots sized by an ``AdaptiveLimit``, behind a shared ``ThrottleGate``."""

    def __init__(
        self,
        limit: AdaptiveLimit | None = None,
        *,
        budget: ExecutionBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.limit = limit or AdaptiveLimit()
        self.gate = ThrottleGate()
        self.budget = budget or ExecutionBudget()
        self._clock = clock
        self._sleep = sleep
        self._in_flight = 0
        self._changed: asyncio.Condition | None = None
        self._listeners: list[Callable[[float], None]] = []

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def now(self) -> float:
        """The limiter's clock (monotonic seconds), the one its budget is kept in."""
        return self._clock()

    def _condition(self) -> asyncio.Condition:
        # Created lazily so the limiter can be built outside a running loop.
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def wait_gate(self) -> None:
        while (delay := self.gate.wait(self._clock())) > 0:
            await self._sleep(delay)

    async def wait_budget(self, cost_ms: float, bulk: bool = False) -> None:
        while (delay := self.budget.wait(self._clock(), cost_ms, bulk=bulk)) > 0:
            await self._sleep(min(delay, 1.0))

    @asynccontextmanager
    async def slot(
        self, cost_ms: float = 0.0, *, bulk: bool = False, held: Reservation | None = None
    ) -> AsyncIterator[Reservation]:
        """Hold one in-flight slot; waits for the gate to open, for ``cost_ms`` of the
        execution budget (charged when the slot is taken) and for a free slot. The
        caller calls ``refund()`` on what it yields if the request was not executed;
        ``held``: the reservation to yield (so the caller can ``amend`` it afterwards)."""
        cond = self._condition()
        while True:
            await self.wait_gate()
            await self.wait_budget(cost_ms, bulk)
            async with cond:
                await cond.wait_for(lambda: self._in_flight < self.limit.slots)
                if self.gate.wait(self._clock()) > 0:
                    continue  # throttled while we queued: wait again, holding nothing
                if self.budget.wait(self._clock(), cost_ms, bulk=bulk) > 0:
                    continue  # another lane took the budget meanwhile
                reserved = self.budget.charge(self._clock(), cost_ms, bulk=bulk)
                self._in_flight += 1
                break
        held = held or Reservation()
        held.refunded, held.budget, held.entry = False, self.budget, reserved
        try:
            yield held
        finally:
            if held.refunded:
                self.budget.refund(reserved)
            else:
                self.budget.finished(reserved, self._clock())
            async with cond:
                self._in_flight -= 1
                cond.notify_all()

    async def _notify(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()

    async def succeeded(self, dop_hint: int | None = None) -> None:
        self.limit.on_success(dop_hint)
        self.budget.on_success()
        await self._notify()

    def on_throttle(self, listener: Callable[[float], None]) -> None:
        """Call ``listener(retry_after)`` on every 429 this process sees; it runs in the
        sending task, so it must not block."""
        self._listeners.append(listener)

    def throttled(self, retry_after: float, *, execution: bool = False) -> None:
        now = self._clock()
        if execution:
            self.budget.on_throttle(now)
        self.gate.close_for(now, retry_after)
        self.limit.on_throttle(now)
        for listener in self._listeners:
            listener(retry_after)

    def hold(self, seconds: float) -> None:
        """Close the gate for ``seconds`` because another process sharing the credential
        was told to wait; our own concurrency is left alone (it was not our burst)."""
        self.gate.close_for(self._clock(), seconds)
