"""The push's outcome decision for every class of Dynamics answer, without I/O."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from crmsync.dynamics.faults import PreconditionFailed, classify, from_transport_error
from crmsync.dynamics.writes import ItemResult, Write
from crmsync.engine.plan import Send
from crmsync.engine.verdict import Parked, Retry, RetryPolicy, Stale, Synced, judge
from crmsync.errors import RecordRejected, Retriable
from crmsync.store.queue import Entry

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=5, base_seconds=2.0, max_seconds=60.0)
ID = "00000000-0000-0000-0000-000000000001"


def send(operation: str = "update", if_match: str | None = 'W/"7"', attempts: int = 0) -> Send:
    entry = Entry(1, "lead", "to_crm", "1", 1, ID, operation, "a@x", None, 1, attempts, NOW)
    op = {"update": "update", "insert": "upsert", "delete": "delete"}[operation]
    body = None if operation == "delete" else {"lastname": "L"}
    match = if_match if operation == "update" else None
    return Send(entry, Write(op, "leads", ID, body, if_match=match), ID, {"last_name": "L"})


def test_an_acknowledged_write_is_synced_with_its_new_etag() -> None:
    assert judge(send(), ItemResult(crm_id=ID, etag='W/"8"'), NOW, POLICY) == Synced('W/"8"')


def test_a_delete_of_a_record_already_gone_is_synced() -> None:
    gone = RecordRejected("0x80040217", "lead does not exist", status=404)
    assert judge(send("delete"), ItemResult(error=gone), NOW, POLICY) == Synced(None)


def test_an_update_of_a_record_gone_from_dynamics_is_parked() -> None:
    gone = RecordRejected("0x80040217", "lead does not exist", status=404)
    assert judge(send(), ItemResult(error=gone), NOW, POLICY) == Parked(
        "0x80040217", "lead does not exist"
    )


def test_412_against_the_last_synced_etag_is_stale() -> None:
    changed = PreconditionFailed("0x80060882", "version mismatch", status=412)
    assert judge(send(), ItemResult(error=changed), NOW, POLICY) == Stale()


def test_412_against_any_version_means_gone_and_is_parked() -> None:
    changed = PreconditionFailed("0x80060882", "no record", status=412)
    verdict = judge(send(if_match="*"), ItemResult(error=changed), NOW, POLICY)
    assert verdict == Parked("0x80060882", "no record")


def test_a_data_error_is_parked_with_dynamics_code() -> None:
    bad = RecordRejected("0x80044331", "A validation error occurred.", status=400)
    verdict = judge(send("insert"), ItemResult(error=bad), NOW, POLICY)
    assert verdict == Parked("0x80044331", "A validation error occurred.")


def test_a_refusal_without_a_code_is_parked_under_its_status() -> None:
    bad = RecordRejected("", "forbidden", status=403)
    assert judge(send(), ItemResult(error=bad), NOW, POLICY) == Parked("http_403", "forbidden")


@pytest.mark.parametrize("status", [429, 503, None])
def test_a_transient_fault_is_retried_with_backoff(status: int | None) -> None:
    fault = Retriable("busy", status=status)
    verdict = judge(send(attempts=2), ItemResult(error=fault), NOW, POLICY, random.Random(1))
    assert isinstance(verdict, Retry)
    assert verdict.code == (f"http_{status}" if status else "Retriable")
    # Third failure: 2 * 2^2 = 8 s, half of it jittered.
    assert NOW + timedelta(seconds=4) <= verdict.at <= NOW + timedelta(seconds=8)


def test_a_retry_never_comes_before_retry_after() -> None:
    throttled = Retriable("throttled", status=429, retry_after=300.0)
    verdict = judge(send(), ItemResult(error=throttled), NOW, POLICY)
    assert isinstance(verdict, Retry) and verdict.at == NOW + timedelta(seconds=300)


def test_a_transient_fault_that_used_up_its_attempts_is_parked() -> None:
    fault = Retriable("busy", status=503)
    verdict = judge(send(attempts=4), ItemResult(error=fault), NOW, POLICY)
    assert verdict == Parked("http_503", "gave up after 5 attempts: busy", transient=True)


@pytest.mark.parametrize(
    ("operation", "if_match", "status", "code", "verdict"),
    [
        ("update", 'W/"7"', 429, "0x80072322", Retry),
        ("update", 'W/"7"', 503, "", Retry),
        ("insert", None, 500, "0x80040333", Parked),  # duplicate detection
        ("insert", None, 400, "0x80044331", Parked),
        ("update", 'W/"7"', 403, "0x80040220", Parked),
        ("update", 'W/"7"', 404, "0x80040217", Parked),
        ("delete", None, 404, "0x80040217", Synced),
        ("delete", None, 404, "", Synced),
        ("update", 'W/"7"', 412, "", Stale),
        ("update", "*", 412, "", Parked),
        ("update", 'W/"7"', 412, "0x80060892", Parked),  # alternate key: a rejection
    ],
)
def test_each_class_of_dynamics_answer_gets_its_verdict(
    operation: str, if_match: str | None, status: int, code: str, verdict: type
) -> None:
    """From the response as Dataverse sends it (``classify``) to what the queue does."""
    err = classify(status, json.dumps({"error": {"code": code, "message": "m"}}), {})
    got = judge(send(operation, if_match=if_match), ItemResult(error=err), NOW, POLICY)
    assert isinstance(got, verdict), got


def test_a_cut_connection_is_retried() -> None:
    err = from_transport_error(httpx.ReadError("reset"))
    assert isinstance(judge(send(), ItemResult(error=err), NOW, POLICY), Retry)
