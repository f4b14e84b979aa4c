"""The drain of ``bench/push.py --cost-model dataverse``: a backlog of lead updates under
Dataverse's execution-time budget, bulk engine against the $batch-only engine.

Time is scaled as ``bench/push.py`` scales it: the 300 s window becomes ``--window``
seconds and the budgets shrink with it (1,200,000 ms of execution becomes
``1,200,000 * window / 300``; 6,000 requests become ``6,000 * window / 300``), so the
budget *rate* (4,000 ms of execution a second) and the per-operation costs are
Dataverse's own (the emulator's defaults). Per engine:

1. set-up, not measured: ``--records`` leads inserted locally and pushed by a
   ``crmsync worker`` with the emulator's flat cost model and no limits;
2. every lead updated in one local transaction (``--bad``: that share gets a last name
   Dynamics refuses, 51 characters; ``--resync``: with capture suppressed, as a change
   the sync never saw, then a resync job of every lead, which the worker runs, queues
   them again), the emulator switched to ``cost_model: dataverse``, a worker started
   with the budget as settings;
3. with ``--edits``, another lead edited once a second meanwhile (its lag: commit to
   ``sync_record.last_synced_at``);
4. the rate is what was done over the whole windows begun (from the worker's start):
   a sliding window starting empty admits a full budget at the start of each window,
   so a drain of T seconds can do at most ``ceil(T / window)`` budgets of work; a part
   window counts whole (conservative). The $batch-only engine runs
   ``--baseline-seconds`` (whole windows) on its own backlog.

The ceiling: the budget rate over UpdateMultiple's charge per record at 1,000 records a
request (100 ms + 19.27 ms each). Checked after the bulk drain: every lead in Dynamics
once with its value (0 lost, 0 duplicated), each refused lead one open sync error.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from crmsync.config import Settings
from crmsync.domain import Direction, JobKind
from crmsync.engine.resync import ResyncRequest
from crmsync.store import jobs
from crmsync.store.db import capture_suppressed, create_store_engine, write_transaction
from crmsync.store.migrate import upgrade
from crmsync.store.schema import sync_change, sync_error, sync_queue, sync_record

DATAVERSE_WINDOW_S = 300
DATAVERSE_BUDGET_MS = 1_200_000
DATAVERSE_REQUESTS = 6_000
UPDATE_MULTIPLE_MS = (100.0, 19.27)  # per request, per record (emulator defaults)


@dataclass
class Run:
    rate: float = 0.0
    seconds: float = 0.0
    done: int = 0
    throttled: int = 0
    execution: dict[str, float] = field(default_factory=dict)
    lags: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


def scaled(window: float) -> tuple[int, int]:
    """(execution ms, requests) allowed per ``window`` seconds at Dataverse's rates."""
    return (
        int(DATAVERSE_BUDGET_MS * window / DATAVERSE_WINDOW_S),
        max(1, int(DATAVERSE_REQUESTS * window / DATAVERSE_WINDOW_S)),
    )


def ceiling(window: float) -> float:
    budget, _ = scaled(window)
    per_request, per_record = UPDATE_MULTIPLE_MS
    return budget / window / ((per_request + per_record * 1000) / 1000)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def worker_env(
    url: str, db: str, window: float, bulk: bool, batch: int, user: str
) -> dict[str, str]:
    """A worker's settings as Dynamics' application ``user``: the budget is per user,
    so each phase (set-up, bulk drain, $batch-only drain) has its own, and none starts
    with another's spending still in its window."""
    budget, _ = scaled(window)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env.update(
        CRMSYNC_DATABASE_URL=db,
        CRMSYNC_DYNAMICS_URL=url,
        CRMSYNC_AUTHORITY_URL=url,
        CRMSYNC_TENANT_ID="bench",
        CRMSYNC_CLIENT_ID=f"bench-{user}",
        CRMSYNC_CLIENT_SECRET="bench-secret",
        CRMSYNC_BATCH_SIZE=str(batch),
        CRMSYNC_PUSH_BULK="true" if bulk else "false",
        CRMSYNC_EXECUTION_BUDGET_MS=str(budget),
        CRMSYNC_EXECUTION_WINDOW_SECONDS=str(window),
        CRMSYNC_POLL_SECONDS="3600",  # the bench measures the push
    )
    return env


def start_worker(env: dict[str, str], lanes: int) -> subprocess.Popen[bytes]:
    crmsync = str(Path(sys.executable).with_name("crmsync"))
    cmd = [crmsync, "worker", "--concurrency", str(lanes)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)


def job_over(engine: sa.Engine, job_id: int) -> bool:
    with engine.connect() as conn:
        return jobs.get(conn, job_id).state.finished


def pending(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        left = conn.execute(
            sa.select(sa.func.count())
            .select_from(sync_queue)
            .where(sync_queue.c.state == "pending")
        ).scalar_one()
        left += conn.execute(sa.select(sa.func.count()).select_from(sync_change)).scalar_one()
    return int(left)


def stats(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/_emulator/stats", timeout=30).json()
    return body


def configure(url: str, **values: Any) -> None:
    httpx.put(f"{url}/_emulator/config", json=values, timeout=30).raise_for_status()


EDIT_POOL = 1_000  # leads outside the backlog, edited one a second during the drain


def set_up(url: str, db: str, records: int, window: float, lanes: int) -> sa.Engine:
    """``records`` leads (and ``EDIT_POOL`` more) in the store and in Dynamics, synced
    (flat costs, no limits)."""
    httpx.post(f"{url}/_emulator/reset", timeout=30).raise_for_status()
    configure(url, cost_model="flat", max_execution_ms=None, max_requests=None)
    engine = create_store_engine(db)
    upgrade(engine, Settings().object_specs().values())
    with write_transaction(engine) as conn:
        total = records + EDIT_POOL
        for start in range(0, total, 10_000):
            conn.execute(
                sa.text("INSERT INTO lead (email, last_name, company) VALUES (:e, :l, 'Acme')"),
                [
                    {"e": f"b{i}@example.com", "l": f"L{i}"}
                    for i in range(start, min(total, start + 10_000))
                ],
            )
    env = worker_env(url, db, window, True, 1000, "setup")
    # Not paced to the scaled budget: the emulator enforces none here, and pacing made
    # the set-up run at the drain's own rate (83 minutes for 1,000,000 records).
    env["CRMSYNC_EXECUTION_BUDGET_MS"] = str(10**12)
    proc = start_worker(env, lanes)
    try:
        while pending(engine):
            time.sleep(0.5)
    finally:
        stop_worker(proc)
    return engine


def edits(engine: sa.Engine, first: int, stop: threading.Event, out: dict[int, datetime]) -> None:
    """One lead outside the backlog edited a second (each once), as a person would."""
    k = 0
    while k < EDIT_POOL and not stop.wait(1.0):
        with write_transaction(engine) as conn:
            conn.execute(
                sa.text("UPDATE lead SET last_name = :l WHERE id = :i"),
                {"l": f"E{k}", "i": first + k},
            )
        out[first + k] = datetime.now(UTC)
        k += 1


def drain(
    url: str,
    engine: sa.Engine,
    db: str,
    args: Any,
    *,
    records: int,
    bulk: bool,
    seconds: float | None,
) -> Run:
    budget, requests = scaled(args.window)
    run = Run()
    resync = getattr(args, "resync", False)
    with write_transaction(engine) as conn, capture_suppressed(conn) if resync else nullcontext():
        # With --resync the change is unseen (capture suppressed): the resync sends it.
        conn.execute(
            sa.text("UPDATE lead SET last_name = 'U' || id WHERE id <= :n"), {"n": records}
        )
        if args.bad:
            every = max(1, round(1 / args.bad))
            conn.execute(
                sa.text("UPDATE lead SET last_name = :l WHERE id % :k = 0 AND id <= :n"),
                {"l": "x" * 51, "k": every, "n": records},
            )
    job = None
    if resync:  # every lead (the edit pool too) queued again by a job the worker runs
        request = ResyncRequest("lead", Direction.TO_CRM)
        with write_transaction(engine) as conn:
            job = jobs.create(conn, JobKind.RESYNC, "lead", Direction.TO_CRM, request.params())
    backlog = records + EDIT_POOL if resync else pending(engine)
    configure(
        url,
        cost_model="dataverse",
        max_execution_ms=budget,
        window_s=args.window,
        max_requests=requests,
        latency_ms=args.latency_ms,
        per_record_ms=0,
    )
    before = stats(url)
    stop = threading.Event()
    edited: dict[int, datetime] = {}
    editor = threading.Thread(target=edits, args=(engine, records + 1, stop, edited), daemon=True)
    batch = args.batch_size if bulk else args.baseline_batch_size
    user = "bulk" if bulk else "batch"
    proc = start_worker(worker_env(url, db, args.window, bulk, batch, user), args.lanes)
    started = time.monotonic()
    if args.edits and bulk:
        editor.start()
    try:
        while True:
            time.sleep(0.5)
            now = time.monotonic() - started
            left = pending(engine) + (job is not None and not job_over(engine, job.id))
            if left == 0 or (seconds is not None and now >= seconds):
                break
            if now > args.timeout:
                raise SystemExit(f"drain did not finish in {args.timeout:g} s ({left} left)")
    finally:
        stop.set()
        stop_worker(proc)
    end = time.monotonic() - started
    left = pending(engine)
    # With --bad the refused share is updated twice (two captured changes a record): a
    # drain that finished did exactly ``records`` (a resync: every lead, the pool too).
    done = (backlog if resync else records) if left == 0 else backlog - left
    run.seconds, run.done = end, done
    windows = max(1, math.ceil(end / args.window - 0.02))  # 2%: the poll's overshoot
    after = stats(url)
    run.throttled = after["requests"]["by_status"].get("429", 0) - before["requests"][
        "by_status"
    ].get("429", 0)
    run.execution = {
        m: after["execution_ms"]["by_message"][m] - before["execution_ms"]["by_message"][m]
        for m in after["execution_ms"]["by_message"]
    }
    with engine.connect() as conn:
        acked = dict(
            conn.execute(
                sa.select(sync_record.c.record_id, sync_record.c.last_synced_at).where(
                    sync_record.c.record_id.in_(list(edited) or [-1])
                )
            ).all()
        )
        run.errors = dict(
            conn.execute(
                sa.select(sync_error.c.error_code, sa.func.count())
                .where(sync_error.c.status == "open")
                .group_by(sync_error.c.error_code)
            ).all()
        )
    run.lags = [(acked[i] - at).total_seconds() for i, at in edited.items() if i in acked]
    # Records that went (a refused one is done too, as a sync error: not counted).
    run.rate = (done - sum(run.errors.values())) / (windows * args.window)
    return run


def verify(url: str, engine: sa.Engine) -> tuple[int, int, int]:
    """(lost, duplicated, refused-without-one-error) after a bulk drain."""
    token = httpx.post(
        f"{url}/bench/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "inspector",
            "client_secret": "x",
            "scope": f"{url}/.default",
        },
        timeout=30,
    ).json()["access_token"]
    crm: dict[str, str] = {}
    seen = 0
    link: str | None = f"{url}/api/data/v9.2/leads?$select=leadid,lastname"
    while link:
        body = httpx.get(link, headers={"Authorization": f"Bearer {token}"}, timeout=60).json()
        for r in body["value"]:
            crm[r["leadid"]] = r["lastname"]
            seen += 1
        link = body.get("@odata.nextLink")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, crm_id, last_name FROM lead")).all()
        errors = {
            r.record_key: r.error_code
            for r in conn.execute(sa.select(sync_error).where(sync_error.c.status == "open"))
        }
    lost = refused = 0
    for row in rows:
        bad = len(row.last_name or "") > 50
        if bad:
            refused += errors.get(str(row.id)) != "0x80044331"
        elif crm.get(row.crm_id) != row.last_name:
            lost += 1
    return lost, seen - len({r.crm_id for r in rows}), refused


def main(args: Any, url: str) -> None:
    """Both engines in one run; prints the contract's closing line."""
    tmp = Path(tempfile.mkdtemp(prefix="crmsync-bulk-"))
    figures: dict[str, Run] = {}
    checks: tuple[int, int, int] = (0, 0, 0)
    for name, bulk, records, seconds in (
        ("bulk", True, args.records, None),
        ("$batch-only", False, args.baseline_records, args.baseline_seconds),
    ):
        db = f"sqlite:///{tmp / (name.strip('$') + '.db')}"
        engine = set_up(url, db, records, args.window, args.lanes)
        figures[name] = drain(url, engine, db, args, records=records, bulk=bulk, seconds=seconds)
        if bulk:
            checks = verify(url, engine)
        engine.dispose()
        r = figures[name]
        spent = {k: round(v) for k, v in r.execution.items() if v}
        print(
            f"{name:12s} {r.done:8d} records in {r.seconds:6.1f} s, {r.rate:7.1f} records/s,"
            f" {r.throttled} 429s, execution ms {spent},"
            f" errors {r.errors}",
            flush=True,
        )
    bulk_run, base = figures["bulk"], figures["$batch-only"]
    top = ceiling(args.window)
    lost, duplicated, refused = checks
    print(
        f"\nbudget {scaled(args.window)[0]} ms per {args.window:g} s, backlog {args.records},"
        f" bad {args.bad:.2%}; ceiling {top:.1f} records/s (UpdateMultiple, 1,000 a request)"
    )
    print(f"lost {lost}, duplicated {duplicated}, refused without their own error {refused}")
    if bulk_run.lags:
        lags = sorted(bulk_run.lags)
        p95 = lags[min(len(lags) - 1, int(0.95 * len(lags)))]
        print(
            f"edits during the drain: {len(lags)}, lag p50 {statistics.median(lags):.2f} s,"
            f" p95 {p95:.2f} s, max {lags[-1]:.2f} s"
        )
    ratio = bulk_run.rate / base.rate
    print(f"drain: {bulk_run.rate / top:.2f} of ceiling, {ratio:.2f}\u00d7 the $batch-only engine")
