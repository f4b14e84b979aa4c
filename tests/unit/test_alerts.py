"""The alert policy (``alerts.decide``): once per breach, once on recovery."""

from __future__ import annotations

from datetime import UTC, datetime

from crmsync.alerts import (
    ERRORS_PER_HOUR,
    MAPPING_MISMATCH,
    OLDEST_AGE,
    Event,
    decide,
    thresholds,
)
from crmsync.config import load_settings

NOW = datetime(2026, 11, 25, 13, 0, tzinfo=UTC)
LIMITS = {OLDEST_AGE: 600.0, ERRORS_PER_HOUR: 5.0}


def kinds(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.kind, e.alert, e.object) for e in events]


def test_a_breach_alerts_once_then_recovers_once():
    key = (OLDEST_AGE, "lead")
    assert decide(frozenset(), {key: 600.0}, LIMITS, NOW) == []  # at the threshold: fine
    first = decide(frozenset(), {key: 601.0}, LIMITS, NOW)
    assert kinds(first) == [("alert", OLDEST_AGE, "lead")]
    assert first[0].payload()["value"] == 601.0 and first[0].payload()["threshold"] == 600.0
    assert decide(frozenset({key}), {key: 5000.0}, LIMITS, NOW) == []  # still open: silent
    back = decide(frozenset({key}), {key: 10.0}, LIMITS, NOW)
    assert kinds(back) == [("recovered", OLDEST_AGE, "lead")]
    # Nothing waiting any more: the key is not observed at all, and the incident ends.
    assert kinds(decide(frozenset({key}), {}, LIMITS, NOW)) == [("recovered", OLDEST_AGE, "lead")]


def test_objects_and_alerts_are_independent():
    active = frozenset({(ERRORS_PER_HOUR, "contact")})
    observed = {
        (OLDEST_AGE, "lead"): 700.0,
        (OLDEST_AGE, "contact"): 1.0,
        (ERRORS_PER_HOUR, "contact"): 6.0,
        (ERRORS_PER_HOUR, "lead"): 9.0,
    }
    assert kinds(decide(active, observed, LIMITS, NOW)) == [
        ("alert", ERRORS_PER_HOUR, "lead"),
        ("alert", OLDEST_AGE, "lead"),
    ]


def test_an_unconfigured_alert_never_fires():
    only_age = {OLDEST_AGE: 60.0}
    assert decide(frozenset(), {(ERRORS_PER_HOUR, "lead"): 1e9}, only_age, NOW) == []


def test_thresholds_from_settings_and_the_webhook_url_stays_secret():
    settings = load_settings(
        alert_oldest_age_seconds=900,
        alert_webhook_url="https://hooks.example.com/T000/secret-token",
    )
    assert thresholds(settings) == {OLDEST_AGE: 900.0, MAPPING_MISMATCH: 0.0}
    assert "secret-token" not in repr(settings)
    # An object paused for its mapping is always an alert.
    assert thresholds(load_settings()) == {MAPPING_MISMATCH: 0.0}


def test_bad_alert_settings_are_named_without_their_values():
    import pytest

    from crmsync.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_settings(alert_webhook_url="ftp://hooks.example.com/secret-token")
    assert "CRMSYNC_ALERT_WEBHOOK_URL" in str(caught.value)
    assert "secret-token" not in str(caught.value)
    with pytest.raises(ConfigError, match="CRMSYNC_ALERT_OLDEST_AGE_SECONDS"):
        load_settings(alert_oldest_age_seconds=0)


def test_drift_threshold_is_configured_and_decided() -> None:
    from crmsync.alerts import DRIFT, decide, thresholds
    from crmsync.config import load_settings

    limits = thresholds(load_settings(database_url="sqlite://", alert_drift_records=5))
    assert limits[DRIFT] == 5.0
    now = datetime(2026, 12, 2, tzinfo=UTC)
    (event,) = decide(frozenset(), {(DRIFT, "lead"): 6.0}, limits, now)
    assert (event.kind, event.alert, event.object, event.value) == ("alert", DRIFT, "lead", 6.0)
    (back,) = decide(frozenset({(DRIFT, "lead")}), {(DRIFT, "lead"): 5.0}, limits, now)
    assert back.kind == "recovered"
