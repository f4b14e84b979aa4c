"""How a crmsync process logs: timestamped, levelled lines on stderr, text or JSON.

Every log call in crmsync gives a stable ``event`` key and its facts as ``extra``
fields (STYLE.md 15); both formats show them: ``key=value`` after the text message, or
as members of the JSON object, one object a line (for log shippers).

``configure`` is called once by the command's entry point (``cli.main``), never on
import, so in-process callers (the tests) keep their own logging. Secrets are kept out
by the callers; as a second line of defence, ``configure`` takes the configured secret
values and any record that contains one has it replaced before it is written.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")
REDACTED = "[redacted]"

# What every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's coloured copy of the message
}


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a log call passed as ``extra``."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    when = datetime.fromtimestamp(record.created, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``2026-12-01T20:00:00.123Z WARNING crmsync.engine.worker: message event=... k=v``"""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={_text(v)}" for k, v in fields_of(record).items())
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        body.update(fields_of(record))
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str, ensure_ascii=False)


def _text(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or " " in text or '"' in text else text


class _Redact(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Short values would blank out ordinary words; a real secret is longer.
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if any(s in message for s in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, REDACTED)
            record.msg, record.args = message, None
        for key, value in fields_of(record).items():
            if isinstance(value, str) and any(s in value for s in self.secrets):
                for secret in self.secrets:
                    value = value.replace(secret, REDACTED)
                setattr(record, key, value)
        return True


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced later)."""

    crmsync = True

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure(log_format: LogFormat = "text", secrets: Iterable[str] = ()) -> logging.Handler:
    """Send logs to stderr in ``log_format``: crmsync's and uvicorn's from INFO, other
    libraries' from WARNING (httpx would log every request at INFO). Idempotent."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "crmsync", False)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_Redact(secrets))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("crmsync", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.INFO)
    # uvicorn's own config would give its loggers separate handlers; ours serve them.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    return handler


def add_secrets(secrets: Iterable[str]) -> None:
    """Redact these too (the settings are read after logging is configured)."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, "crmsync", False):
            for f in handler.filters:
                if isinstance(f, _Redact):
                    f.secrets = sorted(
                        {*f.secrets, *(s for s in secrets if len(s) >= 6)}, key=len, reverse=True
                    )


class Conditions:
    """Conditions that come and go (Dynamics unreachable, throttling, server faults),
    logged once when each begins and once when it ends, not at every occurrence.

    A retry loop sees the same fault many times a second; the operator needs to know
    that it started, why, and when it stopped. Per instance, on one event loop.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._since: dict[str, float] = {}

    def begin(self, name: str, message: str, *, event: str, now: float, **fields: Any) -> bool:
        """Log ``message`` as a warning if ``name`` was not already on; True if it was not."""
        if name in self._since:
            return False
        self._since[name] = now
        self._log.warning(message, extra={"event": event, **fields})
        return True

    def end_all(self, message: str, *, now: float) -> None:
        """Every condition that was on is over (a request succeeded)."""
        for name, since in list(self._since.items()):
            del self._since[name]
            self._log.info(
                message.format(name=name),
                extra={"event": f"{name}.over", "seconds": round(now - since, 1)},
            )

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(self._since)
