"""Settings, declared once.

Each setting is a field of ``Settings``: its name gives the environment variable
(``CRMSYNC_<NAME>``), its description is the documentation, and ``SecretStr`` marks the
secrets that must never be printed. Values come from the environment and, optionally, a
TOML file named by ``CRMSYNC_CONFIG`` (environment wins). ``load_settings`` turns every
validation failure into one ``ConfigError`` that names each bad setting.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from crmsync.domain import ObjectSpec
from crmsync.errors import ConfigError
from crmsync.mapping import MappingError
from crmsync.mapping import build as build_mapping

ENV_PREFIX = "CRMSYNC_"
# Mapping problems are named by their TOML path, not by a variable.
MAPPING_PROBLEMS = "the mapping:\n"
# Variables with the prefix that are not settings: the test suite's own.
_NOT_SETTINGS = ("CRMSYNC_TEST_", "CRMSYNC_SCREENSHOTS")

log = logging.getLogger(__name__)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, hide_input_in_errors=True
    )

    database_url: str = Field(
        "sqlite:///crmsync.db",
        repr=False,  # may carry a password
        description="SQLAlchemy URL of the store: sqlite:///path.db or "
        "postgresql+psycopg://user@host:port/db",
    )
    dynamics_url: str | None = Field(
        None,
        description="Dynamics environment URL (https://org.crm.dynamics.com) or the "
        "emulator's http://127.0.0.1:8001",
    )
    tenant_id: str | None = Field(
        None, description="Microsoft Entra tenant of the app registration"
    )
    client_id: str | None = Field(
        None, description="Application (client) id of the app registration"
    )
    client_secret: SecretStr | None = Field(
        None, description="Client secret of the app registration"
    )
    authority_url: str = Field(
        "https://login.microsoftonline.com", description="OAuth2 token authority base URL"
    )
    api_token: SecretStr | None = Field(None, description="Static bearer token accepted by /api/v1")
    admin_password: SecretStr | None = Field(
        None, description="Password of the console user admin (the demo generates one)"
    )
    timezone: str = Field("UTC", description="IANA zone for clock hours in the console and API")
    config: Path | None = Field(None, description="Optional TOML file with more settings")

    batch_size: int = Field(100, ge=1, le=1000, description="Queue entries a worker claims at once")
    lease_seconds: float = Field(
        60.0, gt=0, le=3600, description="How long a worker's claim on entries lasts"
    )
    max_attempts: int = Field(
        8, ge=1, le=100, description="Transient failures before an entry is parked as an error"
    )
    retry_base_seconds: float = Field(
        1.0, gt=0, le=600, description="First retry delay; doubles each attempt, jittered"
    )
    retry_max_seconds: float = Field(300.0, gt=0, le=86400, description="Cap on the retry delay")
    auto_retry_horizon_days: float = Field(
        7.0,
        ge=0,
        le=365,
        description="How long a parked error of a passing kind (throttled, unavailable,"
        " permission, missing reference) is retried by itself; 0: never",
    )
    auto_retry_first_seconds: float = Field(
        60.0, gt=0, le=86400, description="First automatic retry of a parked error; doubles"
    )
    auto_retry_max_seconds: float = Field(
        21600.0, gt=0, le=7 * 86400, description="Cap on the automatic retry delay"
    )
    max_concurrency: int = Field(
        52, ge=1, le=52, description="Requests in flight to Dynamics (52 is Dataverse's limit)"
    )
    push_bulk: bool = Field(
        True,
        description="Inserts and updates as UpsertMultiple/UpdateMultiple (false: $batch only)",
    )
    execution_budget_ms: int = Field(
        1_200_000,
        ge=1,
        description="Dataverse execution time allowed per application user per window (ms)",
    )
    execution_window_seconds: float = Field(
        300.0, gt=0, le=86400, description="Dataverse's execution-time window (seconds)"
    )
    duplicate_detection: bool = Field(
        True, description="Ask Dynamics to apply its duplicate detection rules on creates"
    )
    sync_filter_field: str | None = Field(
        None, description="Two-option Dynamics field; only an explicit No excludes a record"
    )
    delete_behaviour: str = Field(
        "delete", description="What a Dynamics delete does locally: delete or mark"
    )
    poll_seconds: float = Field(
        5.0, gt=0, le=3600, description="How often a worker pulls Dynamics' changes"
    )
    choice_refresh_seconds: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="How often a worker reads again the options of a choice whose labels"
        " Dynamics gives",
    )
    choice_reread_seconds: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="At most this often per table, a worker reads them again when a value is"
        " none of them (a label pushed, an option pulled)",
    )
    alert_oldest_age_seconds: float | None = Field(
        None,
        gt=0,
        description="Alert when an object's oldest waiting change is older than this (seconds)",
    )
    alert_errors_per_hour: int | None = Field(
        None, ge=0, description="Alert when more sync errors than this first fail in an hour"
    )
    alert_drift_records: int | None = Field(
        None,
        ge=0,
        description="Alert when the last audit found more drifted records than this in an object",
    )
    job_request_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description=(
            "Share of Dynamics' request budget (6,000 per 300 s) a resync or an audit may"
            " use in any window (0..1); a job that needs less runs at full speed"
        ),
    )
    audit_daily: bool = Field(
        False, description="Run a drift audit of every object once a day (worker upkeep)"
    )
    alert_webhook_url: SecretStr | None = Field(
        None,
        description="URL the alerts are POSTed to as JSON (may carry a token: kept secret)",
    )
    ops_interval_seconds: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="How often crmsync serve checks the alerts and runs status upkeep",
    )
    history: bool = Field(
        True, description="Keep every record's sync history (sync_event; off only to measure)"
    )
    history_retention_days: int = Field(
        30,
        ge=1,
        le=3650,
        description="Days of sync history kept; each record's latest events are always kept",
    )
    max_request_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="Largest request body crmsync serve reads; a larger one gets 413 unread",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Time a client has to send a request's headers before it is cut off",
    )
    body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Time allowed between two parts of a request body before 408",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Open connections crmsync serve keeps; past it, the one idle longest "
        "before sending its headers is closed, and while every one is busy with a request "
        "a reserve of 1% (at least 8) more may wait for theirs (keep the sum below the file "
        "descriptor limit)",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or networks of reverse proxies whose "
        "X-Forwarded-For and X-Forwarded-Proto are believed (default: none)",
    )
    objects: dict[str, Any] = Field(
        default_factory=dict,
        description="The mapping: TOML [objects.<name>] tables laid over the default one "
        "(docs/mapping.md)",
    )
    # The registry built from ``objects``, and the ``objects`` it was built from.
    _specs: tuple[object, dict[str, ObjectSpec]] | None = PrivateAttr(default=None)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("database_url")
    @classmethod
    def _supported_url(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value

    @field_validator("dynamics_url", "authority_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("delete_behaviour")
    @classmethod
    def _delete_behaviour(cls, value: str) -> str:
        if value not in ("delete", "mark"):
            raise ValueError("must be 'delete' or 'mark'")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: str) -> str:
        for part in _split(value):
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"{part!r} is not an IP address or network") from None
        return value

    @model_validator(mode="after")
    def _retry_range(self) -> Settings:
        if self.retry_base_seconds > self.retry_max_seconds:
            raise ValueError(
                f"CRMSYNC_RETRY_BASE_SECONDS ({self.retry_base_seconds:g}) is greater than "
                f"CRMSYNC_RETRY_MAX_SECONDS ({self.retry_max_seconds:g}): the first retry "
                "delay cannot exceed its cap"
            )
        return self

    @model_validator(mode="after")
    def _choice_reads(self) -> Settings:
        if self.choice_reread_seconds > self.choice_refresh_seconds:
            raise ValueError(
                f"CRMSYNC_CHOICE_REREAD_SECONDS ({self.choice_reread_seconds:g}) is greater than "
                f"CRMSYNC_CHOICE_REFRESH_SECONDS ({self.choice_refresh_seconds:g}): the read made "
                "when a value is none of the options cannot be rarer than the periodic one"
            )
        return self

    @field_validator("objects")
    @classmethod
    def _mapping_problems(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Checked here too, so that its problems are listed with the other settings'.
        try:
            build_mapping(value)
        except MappingError as exc:
            raise ValueError(MAPPING_PROBLEMS + str(exc)) from None
        return value

    @model_validator(mode="after")
    def _mapping(self) -> Settings:
        if self.delete_behaviour == "mark":
            # Marking sets crm_deleted_at, a column crmsync keeps in its own tables
            # only: it adds nothing but the Dynamics id to an application's table.
            attached = [s.name for s in self.object_specs().values() if s.attached]
            if attached:
                raise ValueError(
                    MAPPING_PROBLEMS
                    + "\n".join(
                        f"objects.{name}.table: an attached table has no crm_deleted_at"
                        " column, so CRMSYNC_DELETE_BEHAVIOUR = mark cannot keep its"
                        " deleted records; use delete, or leave table out"
                        for name in attached
                    )
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p, strict=False) for p in _split(self.trusted_proxies))

    @property
    def has_credentials(self) -> bool:
        return bool(self.dynamics_url and self.tenant_id and self.client_id and self.client_secret)

    def object_specs(self) -> dict[str, ObjectSpec]:
        """The object registry: the default mapping with this configuration's laid over
        (built once per ``objects``; its problems were listed at validation)."""
        if self._specs is None or self._specs[0] is not self.objects:
            self._specs = (self.objects, build_mapping(self.objects))
        return dict(self._specs[1])

    def with_specs(self, specs: Mapping[str, ObjectSpec]) -> Settings:
        """A copy whose ``object_specs()`` are ``specs``: the mapping with what a worker
        learned from Dynamics at start (a choice's options, ``engine/choices.py``)."""
        copy = self.model_copy()
        copy._specs = (copy.objects, dict(specs))
        return copy


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by CRMSYNC_CONFIG (keys are setting names, lower case)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(ENV_PREFIX + "CONFIG")
        if not path:
            return {}
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"CRMSYNC_CONFIG: cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"CRMSYNC_CONFIG: {path} is not UTF-8 text (invalid byte at offset "
                f"{exc.start}); save it as UTF-8"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"CRMSYNC_CONFIG: {path} is not valid TOML: {exc}") from None
        return data


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Each ``CRMSYNC_*`` variable that names no setting, with the closest one that does."""
    known = [ENV_PREFIX + name.upper() for name in Settings.model_fields if name != "objects"]
    found = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known or name.startswith(_NOT_SETTINGS):
            continue
        # Compared without the prefix, which every name shares and would make all close.
        close = difflib.get_close_matches(
            name.upper().removeprefix(ENV_PREFIX),
            [k.removeprefix(ENV_PREFIX) for k in known],
            n=1,
            cutoff=0.6,
        )
        found.append((name, ENV_PREFIX + close[0] if close else None))
    return found


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """A typo in a variable's name would otherwise leave its setting at the default."""
    for name, close in unknown_variables(environ):
        hint = f"; did you mean {close}?" if close else ""
        log.warning(
            f"{name} is not a crmsync setting and is ignored{hint}",
            extra={"event": "config.unknown_variable", "variable": name, "closest": close},
        )


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, or raise ConfigError naming every bad setting.

    Unknown ``CRMSYNC_*`` variables are logged as warnings (``warn_unknown_variables``).
    """
    warn_unknown_variables(os.environ)
    return settings_from(overrides)


def settings_from(overrides: Mapping[str, Any]) -> Settings:
    """``load_settings`` without the warnings (a look at the mapping before logging is
    set up: the command warns once it runs)."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(part) for part in err["loc"]]
            message = err["msg"].removeprefix("Value error, ")
            if message.startswith(MAPPING_PROBLEMS):  # each line names its TOML path
                problems.extend(message.removeprefix(MAPPING_PROBLEMS).splitlines())
                continue
            if not loc:  # a check across settings: its message names them
                problems.append(message)
                continue
            name = ENV_PREFIX + loc[0].upper()
            where = ".".join(loc[1:])
            problems.append(f"{name}{'.' + where if where else ''}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
    return settings
