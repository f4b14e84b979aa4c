"""The console's login session: the admin password, signed cookies and login throttling.

- The password (``CRMSYNC_ADMIN_PASSWORD``) is hashed with argon2id once at start-up; only
  the hash is kept, and a login is checked against it (``Passwords``).
- The session lives in a cookie signed with itsdangerous (Starlette's
  ``SessionMiddleware``): ``HttpOnly``, ``SameSite=Lax``, and ``Secure`` whenever the
  request came over https (``SchemeAwareSessions`` picks per request).
- The signing key is derived from the password with argon2id (why: beside the code).
- ``LoginThrottle`` makes each failed login past a few wait longer before the next, per
  client and account, so that someone else's guesses never lock the admin out.

Each session has a random id. Logging out clears the cookie and records the id as
revoked in the store (``RevokedSessions``), so a copy of the cookie taken earlier is
refused: at once by the process that logged out, by the others from their next refresh
(at start-up, then every few seconds in the upkeep loop).
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.low_level import Type, hash_secret_raw
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from crmsync.store import sessions
from crmsync.store.db import write_transaction

log = logging.getLogger(__name__)

ADMIN_USER = "admin"
COOKIE = "crmsync_session"
# A login lasts a working day; the cookie is re-signed only when the session changes,
# so this is also the absolute lifetime (checked again in ``logged_in``).
MAX_AGE_SECONDS = 12 * 3600
# Changing this salt signs every console user out.
_KEY_SALT = b"crmsync-console-session-v1"

# argon2id at OWASP's recommended minimum (19 MiB, 2 passes, 1 lane): a guess costs
# tens of milliseconds of CPU and 19 MiB, and a login stays quick on a small box.
TIME_COST, MEMORY_KIB, LANES = 2, 19 * 1024, 1

SESSION_USER = "user"
SESSION_SINCE = "since"
SESSION_ID = "sid"


class Passwords:
    """The admin password's argon2id hash, and the session signing key derived from it."""

    def __init__(self, password: SecretStr | None) -> None:
        self._hasher = PasswordHasher(
            time_cost=TIME_COST, memory_cost=MEMORY_KIB, parallelism=LANES, type=Type.ID
        )
        plain = password.get_secret_value() if password is not None else ""
        self.enabled = bool(plain)
        self._hash = self._hasher.hash(plain) if plain else None
        if plain:
            # The signing key derives from the password (fixed salt): every console process
            # given the same password accepts the same cookies (the console is stateless
            # across machines), changing the password signs everyone out, and a leaked
            # cookie cannot be used to guess the password at HMAC speed.
            key = hash_secret_raw(
                plain.encode("utf-8"),
                _KEY_SALT,
                time_cost=TIME_COST,
                memory_cost=MEMORY_KIB,
                parallelism=LANES,
                hash_len=32,
                type=Type.ID,
            )
            self.signing_key = key.hex()
        else:
            # Nobody can log in; any key will do.
            self.signing_key = secrets.token_hex(32)

    def check(self, user: str, password: str) -> bool:
        """Whether ``user``/``password`` is the admin's login (always hashes: no timing hint)."""
        if self._hash is None:
            return False
        ok: bool
        try:
            ok = self._hasher.verify(self._hash, password)
        except (VerificationError, InvalidHashError):
            ok = False
        return ok and secrets.compare_digest(user.encode("utf-8"), ADMIN_USER.encode("utf-8"))


# -- login throttling -------------------------------------------------------------------


@dataclass
class LoginThrottle:
    """A growing delay after failed logins, per client and account, and per client.

    The first ``free`` failures of a (client, account) pair cost nothing; after each
    further one, that pair's next attempt is refused (429) until ``base`` seconds have
    passed, doubling each time up to ``max_delay``. The right password is then
    accepted as soon as the delay has run out: never a lock. A client also has a
    budget across accounts (``client_free``, growing the same way). Keyed by the
    client's address, so one client's guesses never delay another's login (the address
    is the proxy's unless it is in CRMSYNC_TRUSTED_PROXIES). Failures are forgotten
    ``window`` seconds after the last, and on success. Per process; memory bounded.
    """

    free: int = 5
    client_free: int = 20
    base: float = 1.0
    max_delay: float = 60.0
    window: float = 900.0
    clock: Callable[[], float] = time.monotonic
    max_keys: int = 10_000
    _failures: dict[tuple[str, ...], tuple[int, float]] = field(default_factory=dict)

    def _keys(self, client: str, user: str) -> tuple[tuple[tuple[str, ...], int], ...]:
        return (((client, user), self.free), ((client,), self.client_free))

    def delay(self, failures: int, free: int) -> float:
        """Seconds to wait after ``failures`` failed logins (a pure function)."""
        if failures < free:
            return 0.0
        return min(self.max_delay, self.base * 2.0 ** min(failures - free, 30))

    def retry_after(self, client: str, user: str) -> int:
        """Whole seconds until ``client`` may try ``user`` again; 0 when it may now."""
        now, wait = self.clock(), 0.0
        for key, free in self._keys(client, user):
            count, last = self._failures.get(key, (0, 0.0))
            if count and now - last < self.window:
                wait = max(wait, last + self.delay(count, free) - now)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, client: str, user: str) -> None:
        now = self.clock()
        for key, _free in self._keys(client, user):
            count, last = self._failures.pop(key, (0, 0.0))
            if now - last >= self.window:
                count = 0
            if len(self._failures) >= self.max_keys:
                # Bounded memory under a flood of clients: forget the oldest.
                self._failures.pop(next(iter(self._failures)))
            self._failures[key] = (count + 1, now)

    def succeeded(self, client: str, user: str) -> None:
        for key, _free in self._keys(client, user):
            self._failures.pop(key, None)


# -- the session ------------------------------------------------------------------------


class RevokedSessions:
    """The ids of sessions logged out before their cookies expire: this process's own
    at once, every process's since the last ``refresh`` from the store."""

    def __init__(self) -> None:
        self._until: dict[str, datetime] = {}  # session id -> when its cookie expires
        self._lock = threading.Lock()

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._until

    def revoke(self, engine: Engine, session_id: str, since: float) -> None:
        expires = datetime.fromtimestamp(since, UTC) + timedelta(seconds=MAX_AGE_SECONDS)
        with self._lock:
            self._until[session_id] = expires
        try:
            with write_transaction(engine) as conn:
                sessions.revoke(conn, session_id, expires)
        except SQLAlchemyError:
            # Logged out here all the same; other console processes are not told.
            log.warning(
                "logout not shared with other console processes: the store refused it",
                extra={"event": "console.logout_unshared"},
            )

    def refresh(self, engine: Engine) -> None:
        """Add the other processes' revocations; forget those whose cookies expired."""
        now = datetime.now(UTC)
        with engine.connect() as conn:
            stored = sessions.revoked(conn, now)
        with self._lock:
            merged = {**self._until, **stored}
            self._until = {sid: until for sid, until in merged.items() if until > now}


def logged_in(conn: HTTPConnection) -> bool:
    """Whether this request carries a valid, unexpired, not logged-out admin session."""
    session = conn.session
    if session.get(SESSION_USER) != ADMIN_USER:
        return False
    since, session_id = session.get(SESSION_SINCE), session.get(SESSION_ID)
    if not isinstance(session_id, str) or session_id in conn.app.state.revoked_sessions:
        return False
    return isinstance(since, int | float) and 0 <= time.time() - since < MAX_AGE_SECONDS


def session_check(request: HTTPConnection) -> bool:
    """A credential check for ``/api/v1`` (see ``web/auth.py``): the console's session."""
    return logged_in(request)


def start_session(conn: HTTPConnection) -> None:
    """Log the admin in: a fresh session (new id, new CSRF token), so nothing from before
    carries."""
    conn.session.clear()
    conn.session[SESSION_USER] = ADMIN_USER
    conn.session[SESSION_SINCE] = int(time.time())
    conn.session[SESSION_ID] = secrets.token_urlsafe(24)


def end_session(conn: HTTPConnection) -> None:
    """Log out: the cookie is cleared and its session id revoked for every process
    (a blocking store write: call it from a worker thread)."""
    session_id, since = conn.session.get(SESSION_ID), conn.session.get(SESSION_SINCE)
    if isinstance(session_id, str) and isinstance(since, int | float):
        revoked: RevokedSessions = conn.app.state.revoked_sessions
        revoked.revoke(conn.app.state.engine, session_id, since)
    conn.session.clear()


class SchemeAwareSessions:
    """Signed-cookie sessions whose cookie is ``Secure`` when the request is https, chosen
    per request so that one process serves a loopback http port and an https proxy alike."""

    def __init__(self, app: ASGIApp, secret_key: str) -> None:
        def make(https_only: bool) -> SessionMiddleware:
            return SessionMiddleware(
                app,
                secret_key=secret_key,
                session_cookie=COOKIE,
                max_age=MAX_AGE_SECONDS,
                same_site="lax",
                https_only=https_only,
            )

        self.secure = make(True)
        self.plain = make(False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        https = scope.get("scheme") in ("https", "wss")
        await (self.secure if https else self.plain)(scope, receive, send)
