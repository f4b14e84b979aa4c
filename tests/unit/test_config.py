"""Settings: defaults, validation naming each bad setting, secrets kept out of sight."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmsync.config import load_settings
from crmsync.domain import ConflictRule, Flow
from crmsync.errors import ConfigError
from crmsync.mapping import activate, default_objects


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CRMSYNC_"):
            monkeypatch.delenv(key)


def test_contract_defaults() -> None:
    s = load_settings()
    assert s.database_url == "sqlite:///crmsync.db"
    assert s.authority_url == "https://login.microsoftonline.com"
    assert s.timezone == "UTC"
    specs = s.object_specs()
    assert {n: sp.flow for n, sp in specs.items()} == {
        "lead": Flow.BOTH,
        "contact": Flow.BOTH,
        "account": Flow.FROM_CRM,
        "opportunity": Flow.FROM_CRM,
    }
    assert specs["lead"].rule_for("email") is ConflictRule.LOCAL_WINS
    assert specs["contact"].rule_for("email") is ConflictRule.CRM_WINS
    assert specs["lead"].fields["email"] == "emailaddress1"


def test_every_bad_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_TIMEZONE", "Mars/Olympus")
    monkeypatch.setenv("CRMSYNC_BATCH_SIZE", "0")
    monkeypatch.setenv("CRMSYNC_DYNAMICS_URL", "org.crm.dynamics.com")
    monkeypatch.setenv("CRMSYNC_DATABASE_URL", "mysql://x")
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    for name in (
        "CRMSYNC_TIMEZONE",
        "CRMSYNC_BATCH_SIZE",
        "CRMSYNC_DYNAMICS_URL",
        "CRMSYNC_DATABASE_URL",
    ):
        assert name in text


def test_unknown_setting_in_toml_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('batch_sise = 5\n[objects.widget]\nflow = "both"\n')
    monkeypatch.setenv("CRMSYNC_CONFIG", str(cfg))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "batch_sise" in str(info.value).lower()


def test_toml_object_overrides_and_env_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'batch_size = 10\n[objects.account]\nflow = "both"\n'
        '[objects.lead.field_rules]\nemail = "crm_wins"\n'
    )
    monkeypatch.setenv("CRMSYNC_CONFIG", str(cfg))
    monkeypatch.setenv("CRMSYNC_BATCH_SIZE", "20")
    s = load_settings()
    assert s.batch_size == 20
    specs = s.object_specs()
    assert specs["account"].flow is Flow.BOTH
    assert specs["lead"].rule_for("email") is ConflictRule.CRM_WINS
    assert specs["lead"].rule_for("last_name") is ConflictRule.LOCAL_WINS


@pytest.mark.parametrize(
    "toml",
    [
        '[objects.lead.fields]\n"email; DROP TABLE lead" = "emailaddress1"\n',
        '[objects.lead.fields]\nemail = "x) ; --"\n',
        '[objects.lead.field_rules]\nnope = "crm_wins"\n',
    ],
)
def test_object_overrides_must_name_real_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    monkeypatch.setenv("CRMSYNC_CONFIG", str(cfg))
    # Named by its TOML path, as the contract's mappings section says.
    with pytest.raises(ConfigError, match=r"\n  objects\.lead\.(fields|field_rules)\."):
        load_settings()


def test_unreadable_or_invalid_toml_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRMSYNC_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="CRMSYNC_CONFIG"):
        load_settings()
    bad = tmp_path / "bad.toml"
    bad.write_text("batch_size = [")
    monkeypatch.setenv("CRMSYNC_CONFIG", str(bad))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings()


def test_secrets_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_CLIENT_SECRET", "canary-secret-1")
    monkeypatch.setenv("CRMSYNC_API_TOKEN", "canary-token-2")
    monkeypatch.setenv("CRMSYNC_DATABASE_URL", "postgresql+psycopg://u:canary-pw-3@h/db")
    s = load_settings()
    shown = repr(s) + str(s)
    for canary in ("canary-secret-1", "canary-token-2", "canary-pw-3"):
        assert canary not in shown
    # ...and not in validation errors either.
    monkeypatch.setenv("CRMSYNC_BATCH_SIZE", "canary-bad-4")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "canary" not in str(info.value)


def test_config_file_not_utf8_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    latin = tmp_path / "latin1.toml"
    latin.write_bytes('timezone = "Europe/Zürich"\n'.encode("latin-1"))
    monkeypatch.setenv("CRMSYNC_CONFIG", str(latin))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "not UTF-8" in str(info.value) and str(latin) in str(info.value)
    assert "\n" not in str(info.value)


def test_retry_base_above_its_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_RETRY_BASE_SECONDS", "60")
    monkeypatch.setenv("CRMSYNC_RETRY_MAX_SECONDS", "30")
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert "CRMSYNC_RETRY_BASE_SECONDS (60)" in text and "CRMSYNC_RETRY_MAX_SECONDS (30)" in text
    assert "Value error" not in text
    monkeypatch.setenv("CRMSYNC_RETRY_MAX_SECONDS", "60")
    assert load_settings().retry_base_seconds == 60  # equal is fine


def test_unknown_variable_is_named_with_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CRMSYNC_BATCH_SISE", "10")
    monkeypatch.setenv("CRMSYNC_ZZZ", "1")
    monkeypatch.setenv("CRMSYNC_TIMEZONE", "UTC")
    with caplog.at_level("WARNING", logger="crmsync.config"):
        settings = load_settings()
    assert settings.batch_size == 100
    warned = {r.variable: r.closest for r in caplog.records}  # type: ignore[attr-defined]
    assert warned == {"CRMSYNC_BATCH_SISE": "CRMSYNC_BATCH_SIZE", "CRMSYNC_ZZZ": None}
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "CRMSYNC_BATCH_SISE" in m and "did you mean CRMSYNC_BATCH_SIZE" in m for m in messages
    )
    assert all(r.event == "config.unknown_variable" for r in caplog.records)  # type: ignore[attr-defined]


def test_trusted_proxies_are_addresses_or_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_TRUSTED_PROXIES", "10.0.0.0/8, ::1")
    assert [str(n) for n in load_settings().proxy_networks] == ["10.0.0.0/8", "::1/128"]
    monkeypatch.setenv("CRMSYNC_TRUSTED_PROXIES", "10.0.0.0/8,proxy.local")
    with pytest.raises(ConfigError, match=r"CRMSYNC_TRUSTED_PROXIES.*proxy\.local"):
        load_settings()


def test_marking_deletes_is_refused_for_an_attached_table() -> None:
    person = {
        "table": "people",
        "entity_set": "new_people",
        "logical_name": "new_person",
        "primary_key": "new_personid",
        "label": "full_name",
        "fields": {"full_name": {"attribute": "new_name", "type": "string"}},
    }
    with pytest.raises(ConfigError, match=r"objects\.person\.table: an attached table has no"):
        load_settings(delete_behaviour="mark", objects={"person": person})
    try:
        assert load_settings(delete_behaviour="delete", objects={"person": person})
        # A table crmsync creates has crm_deleted_at: marking works there.
        created = {k: v for k, v in person.items() if k != "table"}
        assert load_settings(delete_behaviour="mark", objects={"person": created})
    finally:
        activate(default_objects())


def test_choice_reads_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert (settings.choice_refresh_seconds, settings.choice_reread_seconds) == (600.0, 60.0)
    monkeypatch.setenv("CRMSYNC_CHOICE_REFRESH_SECONDS", "120")
    monkeypatch.setenv("CRMSYNC_CHOICE_REREAD_SECONDS", "120")  # equal is fine
    settings = load_settings()
    assert (settings.choice_refresh_seconds, settings.choice_reread_seconds) == (120.0, 120.0)


def test_a_choice_reread_rarer_than_the_periodic_read_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRMSYNC_CHOICE_REFRESH_SECONDS", "30")
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert "CRMSYNC_CHOICE_REREAD_SECONDS (60)" in text
    assert "CRMSYNC_CHOICE_REFRESH_SECONDS (30)" in text
    assert "Value error" not in text and "Traceback" not in text


@pytest.mark.parametrize("name", ["CHOICE_REFRESH_SECONDS", "CHOICE_REREAD_SECONDS"])
@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_choice_read_timing_must_be_a_positive_number(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"CRMSYNC_{name}", value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert f"CRMSYNC_{name}" in str(info.value)
