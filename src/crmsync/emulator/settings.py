"""The emulator's run-time settings, changed with ``PUT /_emulator/config``.

Declared once as data (name, default, check, help) so validation, ``GET`` and the
docs agree. Real Dataverse limits, for reference (``api-limits.md``): 6,000 requests
and 1,200,000 ms of execution per 300 s window, 52 concurrent requests, per user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from crmsync.emulator.costs import DEFAULT_COSTS, MODELS, valid_costs
from crmsync.emulator.keys import valid_declaration
from crmsync.emulator.model import ENTITIES

REDACTED = "********"
_WEEK_S = 7 * 24 * 3600  # ExpireChangeTrackingInDays defaults to 7 (change-tracking docs)


class SettingsError(ValueError):
    """A bad ``PUT /_emulator/config`` body; the message names every bad key."""


def _number(
    minimum: float, maximum: float | None = None, integer: bool = False
) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if integer and not isinstance(value, int):
            return False
        return value >= minimum and (maximum is None or value <= maximum)

    return check


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


def _entity_sets(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v in ENTITIES for v in value)


def _clients(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
    )


_RATE = _number(0.0, 1.0)
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "latency_ms": (_number(0, 60_000), "a number of milliseconds 0..60000"),
    "per_record_ms": (_number(0, 10_000), "a number of milliseconds 0..10000"),
    "max_requests": (_optional(_number(1, integer=True)), "null or an integer >= 1"),
    "window_s": (_number(0.001, 86_400), "a number of seconds > 0"),
    "max_concurrency": (_optional(_number(1, integer=True)), "null or an integer >= 1"),
    "max_execution_ms": (
        _optional(_number(1, integer=True)),
        "null or an integer >= 1 (milliseconds of execution per user per window)",
    ),
    "cost_model": (lambda v: v in MODELS, f"one of {', '.join(repr(m) for m in MODELS)}"),
    "costs": (
        valid_costs,
        f"an object of milliseconds 0..600000 by operation, any of {', '.join(DEFAULT_COSTS)}",
    ),
    "fail_rate": (_RATE, "a share 0..1"),
    "throttle_rate": (_RATE, "a share 0..1"),
    "cut_rate": (_RATE, "a share 0..1"),
    "throttle_next": (
        _number(0, integer=True),
        "an integer >= 0 (the next N Web API requests are answered 429)",
    ),
    "retry_after_s": (_number(0, 3600, integer=True), "an integer number of seconds 0..3600"),
    "duplicate_detection": (_bool, "true or false"),
    "denied_entity_sets": (_entity_sets, f"a list of entity sets out of {sorted(ENTITIES)}"),
    "token_lifetime_s": (_number(1, 86_400, integer=True), "an integer number of seconds 1..86400"),
    "delta_token_ttl_s": (_number(0.001), "a number of seconds > 0"),
    "expire_delta_tokens": (
        _bool,
        "true or false (an action: expires every delta token issued so far)",
    ),
    "clients": (_optional(_clients), "null or an object mapping client_id to client_secret"),
    "alternate_keys": (
        lambda v: valid_declaration(v, ENTITIES),
        'an object of entity set -> list of column lists, e.g. {"leads": [["emailaddress1"]]}',
    ),
    "seed": (_optional(_number(0, integer=True)), "null or an integer seed for injected faults"),
}


@dataclass
class Settings:
    latency_ms: float = 0
    per_record_ms: float = 0
    max_requests: int | None = None
    window_s: float = 300
    max_concurrency: int | None = None
    max_execution_ms: int | None = 1_200_000
    cost_model: str = "flat"
    costs: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_COSTS))
    fail_rate: float = 0.0
    throttle_rate: float = 0.0
    cut_rate: float = 0.0
    throttle_next: int = 0
    retry_after_s: int = 1
    duplicate_detection: bool = False
    denied_entity_sets: list[str] = field(default_factory=list)
    token_lifetime_s: int = 3600
    delta_token_ttl_s: float = _WEEK_S
    clients: dict[str, str] | None = None
    alternate_keys: dict[str, list[list[str]]] = field(default_factory=dict)
    seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def public(self) -> dict[str, Any]:
        """``as_dict`` for ``GET``/``PUT /_emulator/config`` answers: client secrets are
        never echoed (issue 16), only which client ids are configured."""
        out = self.as_dict()
        if self.clients is not None:
            out["clients"] = {client_id: REDACTED for client_id in self.clients}
        return out


def validate(update: Any) -> dict[str, Any]:
    """Check a config body; return it, or raise ``SettingsError`` naming every problem."""
    if not isinstance(update, dict):
        raise SettingsError("the body must be a JSON object of settings")
    problems = []
    for key, value in update.items():
        if key not in CHECKS:
            problems.append(f"unknown setting '{key}' (known: {', '.join(sorted(CHECKS))})")
        elif not CHECKS[key][0](value):
            problems.append(f"'{key}' must be {CHECKS[key][1]}, got {value!r}")
    if problems:
        raise SettingsError("; ".join(problems))
    return update
