"""The demo's decisions: reuse or reset, pacing, what to write, bad data, history."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from crmsync.demo import history
from crmsync.demo.datadir import Choice, Credentials, DataDir, decide
from crmsync.demo.generator import WEIGHTS, Custom, Traffic, TrafficConfig, due, plan, weights
from crmsync.demo.people import (
    BAD_KINDS,
    EVENT_NAME_LENGTH,
    FEES,
    PLACEHOLDER_EMAILS,
    People,
    registration,
)
from crmsync.demo.runner import demo_mapping, demo_settings, user_maps_objects
from crmsync.domain import FieldType, Flow, ObjectSpec
from crmsync.errors import ConfigError
from crmsync.mapping import activate, build, default_objects

URL = "http://127.0.0.1:1"

# -- reuse or reset -----------------------------------------------------------------------


def never_asked() -> str:
    raise AssertionError("must not prompt")


@pytest.mark.parametrize(
    ("has_data", "flag", "interactive", "expected"),
    [
        (False, True, True, Choice.NEW),
        (False, None, True, Choice.NEW),
        (True, True, False, Choice.RESET),
        (True, False, True, Choice.REUSE),
        (True, None, False, Choice.REUSE),  # a script is never prompted
    ],
)
def test_decide_without_asking(
    has_data: bool, flag: bool | None, interactive: bool, expected: Choice
) -> None:
    assert decide(has_data, flag, interactive, never_asked) is expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("s\n", Choice.RESET), ("reset", Choice.RESET), ("", Choice.REUSE), ("r", Choice.REUSE)],
)
def test_decide_asks_on_a_terminal(answer: str, expected: Choice) -> None:
    assert decide(True, None, True, lambda: answer) is expected


def test_credentials_are_kept_private_and_reused(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "d")
    data.prepare()
    first = data.credentials()
    assert (data.path / "demo.json").stat().st_mode & 0o777 == 0o600
    assert data.credentials() == first
    assert len({first.admin_password, first.api_token, first.client_secret}) == 3


def test_reset_removes_only_the_demos_files(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    data.prepare()
    data.credentials()
    for name in ("crmsync.db", "crmsync.db-wal", "emulator.db", "notes.txt"):
        (tmp_path / name).write_text("x")
    data.reset()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert not data.has_data()


def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    from crmsync.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="--data-dir"):
        DataDir(blocker / "sub").prepare()


# -- pacing and choice ----------------------------------------------------------------------


def test_due_keeps_the_rate_and_writes_off_what_is_too_late() -> None:
    assert due(1.0, 10, 0) == (10, 0)
    assert due(1.05, 10, 10) == (0, 0)
    assert due(1.0, 10, 12) == (0, 0)  # ahead: wait
    made, skipped = due(60.0, 100, 0)  # a stall of a minute is not caught up in a burst
    assert made == 200 and skipped == 5800


def test_plan_follows_the_weights_and_never_makes_crm_writes_bad() -> None:
    rng = random.Random(1)
    table = weights(TrafficConfig())
    actions = [plan(rng, table, 0.1) for _ in range(20_000)]
    channels = Counter(a.channel for a in actions)
    crm_share = sum(w for k, w in WEIGHTS.items() if k[0] == "crm") / sum(WEIGHTS.values())
    assert abs(channels["crm"] / len(actions) - crm_share) < 0.02
    assert not any(a.bad for a in actions if a.channel == "crm" or a.operation == "delete")
    local = [a for a in actions if a.channel != "crm" and a.operation != "delete"]
    assert 0.08 < sum(a.bad for a in local) / len(local) < 0.12


def test_crm_share_rescales_and_zero_turns_dynamics_writes_off() -> None:
    half = weights(TrafficConfig(crm_share=0.5))
    assert sum(w for k, w in half.items() if k[0] == "crm") == pytest.approx(0.5)
    assert not any(k[0] == "crm" for k in weights(TrafficConfig(crm_share=0)))


# -- bad data -------------------------------------------------------------------------------


def test_people_are_unique_and_fit_dataverse() -> None:
    people = People(random.Random(2), "t")
    many = [people.person() for _ in range(2000)]
    assert len({p.email for p in many}) == len(many)
    for p in many:
        assert p.email is not None and len(p.email) <= 100
        assert len(p.last_name) <= 50 and len(p.company) <= 100


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_people_break_the_rule_they_claim_to(kind: str) -> None:
    p = People(random.Random(3), "t").bad_person(kind)
    assert p.bad == kind
    assert p.email is not None
    if kind == "long_last_name":
        assert len(p.last_name) > 50  # lead.lastname max length
    elif kind == "long_company":
        assert len(p.company) > 100  # lead.companyname
    elif kind == "long_email":
        assert len(p.email) > 100  # emailaddress1
    elif kind == "placeholder_email":
        assert p.email in PLACEHOLDER_EMAILS
    else:
        local, _, domain = p.email.partition("@")
        assert " " in local or "." not in domain


def test_unknown_bad_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="one of"):
        People(random.Random(), "t").bad_person("nonsense")


# -- history --------------------------------------------------------------------------------


def test_history_covers_the_days_before_the_current_bucket_only() -> None:
    now = datetime(2026, 11, 25, 14, 7, tzinfo=UTC)
    rows = history.history_rows(now, ZoneInfo("UTC"), default_objects().values())
    starts = {r["bucket_start"] for r in rows}
    assert max(starts) == datetime(2026, 11, 25, 13, 45, tzinfo=UTC)
    assert min(starts) >= now - timedelta(days=history.DAYS, minutes=15)
    assert all(r["bucket_start"].minute % 15 == 0 for r in rows)
    assert all(r["synced"] > 0 for r in rows)
    # Only the directions each object's flow allows.
    assert {(r["object"], r["direction"]) for r in rows} == {
        ("lead", "to_crm"),
        ("lead", "from_crm"),
        ("contact", "to_crm"),
        ("contact", "from_crm"),
        ("account", "from_crm"),
        ("opportunity", "from_crm"),
    }


def test_history_skips_buckets_with_real_counts_and_follows_office_hours() -> None:
    now = datetime(2026, 11, 25, 23, 0, tzinfo=UTC)  # a Wednesday
    skip = {datetime(2026, 11, 25, 13, 0, tzinfo=UTC)}
    rows = history.history_rows(
        now, ZoneInfo("UTC"), default_objects().values(), skip=skip, rng=random.Random(4)
    )
    by_start = Counter[datetime]()
    for r in rows:
        by_start[r["bucket_start"]] += r["synced"]
    assert datetime(2026, 11, 25, 13, 0, tzinfo=UTC) not in by_start
    assert by_start[datetime(2026, 11, 25, 13, 15, tzinfo=UTC)] > 5 * by_start.get(
        datetime(2026, 11, 25, 3, 0, tzinfo=UTC), 1
    )


def test_history_in_a_zone_peaks_at_its_office_hours() -> None:
    assert history.activity(datetime(2026, 11, 25, 13, tzinfo=UTC)) > 0.9
    tokyo = datetime(2026, 11, 25, 13, tzinfo=UTC).astimezone(ZoneInfo("Asia/Tokyo"))
    assert history.activity(tokyo) < 0.1  # 22:00 there


def test_one_way_objects_get_history_in_their_direction_only() -> None:
    specs = default_objects()
    assert specs["account"].flow is Flow.FROM_CRM
    assert history.pairs([specs["account"]]) == [("account", "from_crm")]


# -- the demo mapping: a custom table and a custom field ---------------------------------


def demo_specs() -> dict[str, ObjectSpec]:
    return build(demo_mapping())


def test_the_demo_mapping_adds_a_custom_table_and_a_custom_field() -> None:
    specs = demo_specs()
    events = specs["event_registration"]
    assert not events.standard and events.table == "event_registration"
    assert {f.type for f in events.field_specs.values()} >= {
        FieldType.STRING,
        FieldType.BOOLEAN,
        FieldType.DATETIME,
        FieldType.DECIMAL,
        FieldType.LOOKUP,
    }
    [lookup] = events.lookups
    assert (lookup.target, lookup.navigation) == ("contact", "new_ContactId")
    assert specs["lead"].field_specs["lead_score"].type is FieldType.INTEGER
    # Laid over the default: the standard fields stay.
    assert set(default_objects()["lead"].field_specs) < set(specs["lead"].field_specs)


def test_the_generator_writes_the_custom_parts_only_when_the_mapping_has_them() -> None:
    assert Custom.of(demo_specs()) == Custom(event_registration=True, lead_score=True)
    assert Custom.of(default_objects()) == Custom()
    plain = Traffic(None, None, None, TrafficConfig(), specs=default_objects())  # type: ignore[arg-type]
    assert not any(k[2] == "event_registration" for k in plain.table)
    demo = Traffic(None, None, None, TrafficConfig(), specs=demo_specs())  # type: ignore[arg-type]
    assert ("sql", "insert", "event_registration") in demo.table
    assert not any(k[0] in ("api", "crm") for k in demo.table)  # no such writers given
    # An event_registration of another shape is not the demo's: left alone.
    other = {**demo_mapping(), "event_registration": {**demo_mapping()["event_registration"]}}
    other["event_registration"]["fields"] = {"name": {"attribute": "new_name", "type": "string"}}
    assert not Custom.of(build(other)).event_registration


def test_registrations_fit_the_table_and_bad_ones_break_its_name_length() -> None:
    rng = random.Random(5)
    people = People(rng, "t")
    now = datetime(2026, 11, 25, 14, 7, 31, 123456, tzinfo=UTC)
    good = [registration(rng, people.person(), now) for _ in range(500)]
    assert all(len(r.name) <= EVENT_NAME_LENGTH and r.bad is None for r in good)
    assert all(r.registered < now and r.registered.microsecond == 0 for r in good)
    assert {r.fee for r in good} == set(FEES)
    assert 0.3 < sum(r.attended for r in good) / len(good) < 0.5
    bad = [registration(rng, people.person(), now, bad=True) for _ in range(200)]
    assert all(len(r.name) > EVENT_NAME_LENGTH and r.bad == "long_event_name" for r in bad)


def test_history_covers_the_custom_table() -> None:
    now = datetime(2026, 11, 25, 14, 7, tzinfo=UTC)
    rows = history.history_rows(now, ZoneInfo("UTC"), demo_specs().values())
    assert {("event_registration", "to_crm"), ("event_registration", "from_crm")} <= {
        (r["object"], r["direction"]) for r in rows
    }


def test_the_demo_uses_its_mapping_unless_crmsync_config_maps_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = DataDir(tmp_path / "d")
    creds = Credentials.generate()
    mine = tmp_path / "mine.toml"
    mine.write_text(
        '[objects.lead.fields]\nrating = { attribute = "new_rating", type = "integer" }\n'
    )
    settings_only = tmp_path / "settings.toml"
    settings_only.write_text("batch_size = 50\n")
    monkeypatch.delenv("CRMSYNC_CONFIG", raising=False)
    try:
        assert not user_maps_objects()
        assert "event_registration" in demo_settings(data, creds, URL).object_specs()
        monkeypatch.setenv("CRMSYNC_CONFIG", str(settings_only))
        assert not user_maps_objects()
        settings = demo_settings(data, creds, URL)
        assert settings.batch_size == 50 and "event_registration" in settings.object_specs()
        monkeypatch.setenv("CRMSYNC_CONFIG", str(mine))
        assert user_maps_objects()
        specs = demo_settings(data, creds, URL).object_specs()
        assert "event_registration" not in specs and "rating" in specs["lead"].field_specs
        monkeypatch.setenv("CRMSYNC_CONFIG", str(tmp_path / "missing.toml"))
        assert not user_maps_objects()  # load_settings is the one to say it is missing
        with pytest.raises(ConfigError, match="cannot read"):
            demo_settings(data, creds, URL)
    finally:
        activate(default_objects())
