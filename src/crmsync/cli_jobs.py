"""``crmsync resync``, ``crmsync audit`` and ``crmsync jobs``: thin commands over
``engine/jobs.py`` (registered on ``cli.app`` by ``cli.py``).

A resync or an audit is a job: the command asks for it, runs it here with a progress
bar, and prints what it did. Interrupted (Ctrl-C, or the process killed), the job is
not lost: a worker resumes it where it stopped (``crmsync jobs list`` shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from crmsync.cli import _print_json, _settings, _store, app
from crmsync.cli_objects import NAMED

jobs_app = typer.Typer(no_args_is_help=True, help="Resync and audit jobs: list or cancel them.")
app.add_typer(jobs_app, name="jobs")


@contextlib.contextmanager
def _progress(title: str, enabled: bool) -> Iterator[Callable[[Any], None]]:
    """A progress bar on stderr told of the job's progress (records done of total)."""
    if not enabled:
        yield lambda job: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    task = bars.add_task(title, total=None)

    def show(job: Any) -> None:
        # A job given back says why (Dynamics unreachable, a failed run) until it resumes.
        waiting = f" (waiting: {job.error[:80]})" if job.retry_at and job.error else ""
        bars.update(task, completed=job.done, total=job.total, description=title + waiting)

    with bars:
        yield show


def _run_job(settings: Any, engine: Any, job: Any, title: str, show: bool) -> Any:
    """Run ``job`` here until it ends; while a worker holds it, or while it waits out a
    backoff (Dynamics unreachable), follow it, and run it here again once it is free."""
    from crmsync.engine.jobs import run_here
    from crmsync.engine.worker import worker_id
    from crmsync.store import jobs
    from crmsync.store.types import utcnow

    async def follow(progress: Callable[[Any], None]) -> Any:
        me = worker_id()
        runner: asyncio.Task[Any] | None = None
        while True:
            with engine.connect() as conn:
                now = jobs.get(conn, job.id)
            progress(now)
            if runner is None and now.claimable(me, utcnow()):
                runner = asyncio.create_task(run_here(settings, engine, job.id, me, progress))
            if runner is not None:
                done, _ = await asyncio.wait({runner}, timeout=0.5)
                if runner in done:
                    ended, runner = runner.result(), None
                    if ended is not None and ended.state.finished:
                        return ended
                    continue
            elif now.state.finished:
                return now
            else:
                await asyncio.sleep(0.5)

    with _progress(title, show) as progress:
        try:
            return asyncio.run(follow(progress))
        except KeyboardInterrupt:
            typer.echo(
                f"crmsync: job {job.id} goes on in a worker;"
                f" `crmsync jobs cancel {job.id}` cancels it",
                err=True,
            )
            raise typer.Exit(130) from None


@app.command(
    help="Queue an object's records again in one direction (or, with --dry-run, say"
    " what that would change).\n\nWhich records: changed in a window (--since/--until: the"
    " local change time for to_crm, Dynamics' modifiedon for from_crm), listed with"
    " --id, or all. The records go through the ordinary queue."
)
def resync(
    object: Annotated[str, typer.Argument(help=f"The object: {NAMED}")],
    direction: Annotated[
        str, typer.Option(help="to_crm (send local records) or from_crm (receive Dynamics')")
    ] = "to_crm",
    since: Annotated[
        str | None, typer.Option(help="Changed at or after this time, e.g. 2026-11-25T14:00Z")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Changed before this time")] = None,
    id: Annotated[
        list[str] | None,
        typer.Option("--id", help="A local id (or, from_crm, a Dynamics id); repeatable"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Change nothing: count what would change")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, as the API answers")] = False,
) -> None:
    """Resync (the help text is the decorator's)."""
    from crmsync.domain import JobKind
    from crmsync.engine.jobs import dry_run_here
    from crmsync.engine.resync import check_request
    from crmsync.store import jobs
    from crmsync.store.db import write_transaction
    from crmsync.store.params import parse_timestamp

    settings = _settings()
    with _store(settings, object) as engine:
        req = check_request(
            settings.object_specs(),
            object,
            direction,
            parse_timestamp("since", since),
            parse_timestamp("until", until),
            id or [],
        )
        if dry_run:
            report = asyncio.run(dry_run_here(settings, engine, req))
            if as_json:
                _print_json(report)
            else:
                typer.echo(
                    f"{report['matched']} {req.object} records match;"
                    f" {report['would_change']} would change ({req.direction})"
                )
                for s in report["samples"]:
                    what = s["missing"] and f"missing in {s['missing']}"
                    fields = ", ".join(
                        f"{f['field']}: {f['local']!r} here, {f['dynamics']!r} there"
                        for f in s["fields"]
                    )
                    typer.echo(f"  {s['record_id'] or s['crm_id']}: {what or fields}")
            return
        with write_transaction(engine) as conn:
            job = jobs.create(conn, JobKind.RESYNC, req.object, req.direction, req.params())
        ended = _run_job(settings, engine, job, f"resync {req.object} {req.direction}", not as_json)
    if as_json:
        _print_json(jobs.as_json(ended))
        return
    queued = (ended.result or {}).get("queued", 0)
    typer.echo(f"job {ended.id} {ended.state}: {queued} {req.object} records queued again")
    if ended.error:
        typer.echo(f"crmsync: {ended.error}", err=True)
        raise typer.Exit(1)


# ``crmsync audit``'s exit status when an audit covering the same records is waiting or
# running already (it is not started twice).
AUDIT_BUSY = 3


@app.command(
    help="Compare both sides of every mapped object (or one): records only here, only in"
    " Dynamics, or with different values. --repair queues the fixes under each object's"
    " conflict rules.\n\nRefused (exit status 3) while an audit of the same records is"
    " waiting or running, the scheduled one included: `crmsync jobs list` shows it."
)
def audit(
    object: Annotated[str | None, typer.Option(help=f"Only this object: {NAMED}")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Queue the fixes")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, as the API answers")] = False,
) -> None:
    """Audit (the help text is the decorator's)."""
    from crmsync.domain import JobState
    from crmsync.errors import Busy
    from crmsync.store import jobs
    from crmsync.store.db import write_transaction

    settings = _settings()
    with _store(settings, object) as engine:
        try:
            with write_transaction(engine) as conn:
                job = jobs.ask_for_audit(conn, object, repair)
        except Busy as exc:
            if as_json:
                _print_json({"error": {"code": "audit_running", "message": str(exc)}})
            typer.echo(f"crmsync: {exc} (`crmsync jobs cancel {exc.job_id}` cancels it)", err=True)
            raise typer.Exit(AUDIT_BUSY) from None
        ended = _run_job(settings, engine, job, "audit", not as_json)
    found = list(((ended.result or {}).get("objects") or {}).values())
    if as_json:
        _print_json({"job": jobs.as_json(ended), "objects": found})
    else:
        for f in found:
            line = (
                f"{f['object']}: {f['checked']} checked, {f['only_local']} only here,"
                f" {f['only_dynamics']} only in Dynamics, {f['different']} different"
            )
            typer.echo(line + (f"; {f['repaired']} repairs queued" if repair else ""))
        if ended.error:
            typer.echo(f"crmsync: {ended.error}", err=True)
    if ended.state is not JobState.DONE:
        raise typer.Exit(1)


@jobs_app.command("list")
def jobs_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, as the API answers")] = False,
) -> None:
    """The running jobs, then the latest ones."""
    from crmsync.store import jobs

    settings = _settings()
    with _store(settings) as engine, engine.connect() as conn:
        found = [jobs.as_json(j) for j in jobs.recent(conn)]
    if as_json:
        _print_json(found)
        return
    for j in found:
        total = f"/{j['total']}" if j["total"] is not None else ""
        what = f"{j['kind']} {j['object'] or 'all'} {j['direction'] or ''}".strip()
        what += " (dry run)" if j["params"].get("dry_run") else ""
        line = f"{j['id']:>6}  {j['state']:<9}  {what:<30}  {j['done']}{total}"
        if j["retry_at"]:
            line += f"  resumes at {j['retry_at']}"
        typer.echo(line + (f"  {j['error']}" if j["error"] else ""))


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[int, typer.Argument(min=1, max=2**63 - 1, help="The job's id")],
) -> None:
    """Cancel a job: a waiting one, or one whose worker is dead (its lease ran out), at
    once; a running one at its next page."""
    from crmsync.store import jobs
    from crmsync.store.db import write_transaction

    settings = _settings()
    with _store(settings) as engine, write_transaction(engine) as conn:
        job = jobs.cancel(conn, job_id)
    typer.echo(f"job {job.id}: {job.state}" + (" (stopping)" if not job.state.finished else ""))
