"""The web application: JSON API and operator console over one store engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from sqlalchemy import Engine

from crmsync.config import Settings
from crmsync.domain import ObjectSpec
from crmsync.mapping import activate as activate_mapping
from crmsync.mapping import options
from crmsync.store import migrate, records
from crmsync.store.db import create_store_engine, store_unavailable
from crmsync.store.history import configure as configure_history
from crmsync.web import (
    api_conflicts,
    api_control,
    api_docs,
    api_errors,
    api_history,
    api_jobs,
    api_records,
    api_status,
    console,
    csrf,
    health,
    metrics,
    openapi_mapping,
)
from crmsync.web.auth import API_PREFIX, CredentialCheck, bearer_token_check
from crmsync.web.errors import install_error_handlers
from crmsync.web.limits import Admission, BodyLimit
from crmsync.web.session import (
    LoginThrottle,
    Passwords,
    RevokedSessions,
    SchemeAwareSessions,
    session_check,
)


def create_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    """Build the app. Without ``engine`` one is created from settings (and disposed of
    at shutdown); a given engine stays the caller's."""
    activate_mapping(settings.object_specs())
    configure_history(enabled=settings.history, retention_days=settings.history_retention_days)
    own_engine = engine is None
    store = engine if engine is not None else create_store_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Capture triggers at the configured flows before the records API writes.
        await asyncio.to_thread(
            migrate.ensure_current_if_reachable, store, app.state.specs.values()
        )
        # Refuse sessions other processes logged out before serving anything.
        await health.refresh_revoked_sessions(app)
        upkeep = asyncio.create_task(health.ops_loop(app))
        yield
        upkeep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upkeep
        dynamics = getattr(app.state, "dynamics", None)
        if dynamics is not None:  # built by the first live read (web/api_history.py)
            await dynamics.aclose()
        if own_engine:
            store.dispose()

    app = FastAPI(
        title="crmsync",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        # Swagger UI is served by web/api_docs.py from a pinned package, not a CDN.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        # On every route, present and future: a session-authenticated change needs the
        # session's CSRF token (web/csrf.py).
        dependencies=[Depends(csrf.protect)],
    )
    app.state.settings = settings
    app.state.engine = store
    app.state.specs = settings.object_specs()
    # Anything that may authenticate an API call (see web/auth.py): the bearer token and
    # the console's session.
    checks: list[CredentialCheck] = []
    if settings.api_token is not None and settings.api_token.get_secret_value():
        checks.append(bearer_token_check(settings.api_token))
    # The admin password is hashed here, once; logins are checked against the hash only.
    app.state.passwords = passwords = Passwords(settings.admin_password)
    app.state.login_throttle = LoginThrottle()
    app.state.revoked_sessions = RevokedSessions()
    if passwords.enabled:
        checks.append(session_check)
    app.state.credential_checks = checks
    app.add_middleware(SchemeAwareSessions, secret_key=passwords.signing_key)
    app.add_middleware(Admission)
    # Added last, so outermost: a body is sized and timed before anything reads it.
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_request_bytes,
        body_timeout=settings.body_timeout_seconds,
    )

    install_error_handlers(app)
    app.include_router(api_records.router)
    app.include_router(api_history.router)
    app.include_router(api_status.router)
    app.include_router(api_errors.router)
    app.include_router(api_conflicts.router)
    app.include_router(api_control.router)
    app.include_router(api_jobs.router)
    api_docs.install(app)
    health.install(app, settings)
    app.state.metrics = metrics.MetricsPage(store, app.state.specs, app.state.alerts)
    app.include_router(metrics.router)
    console.install(app)
    _describe_mapping(app, app.state.specs)
    return app


def _describe_mapping(app: FastAPI, specs: Mapping[str, ObjectSpec]) -> None:
    """The OpenAPI document lists the mapping's objects and their typed fields; a choice
    whose labels Dynamics gives lists the options the workers stored, once they have
    (the document is built again when they change)."""
    build = app.openapi
    described: list[Mapping[str, ObjectSpec]] = []

    def openapi() -> dict[str, Any]:
        known = _with_stored_options(app.state.engine, specs)
        if app.openapi_schema is None or described != [known]:
            app.openapi_schema = openapi_mapping.describe(build(), known)
            described[:] = [known]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _with_stored_options(engine: Engine, specs: Mapping[str, ObjectSpec]) -> dict[str, ObjectSpec]:
    if not options.wanted(specs):
        return dict(specs)
    try:
        with engine.connect() as conn:
            return {n: records.with_stored_options(conn, s) for n, s in specs.items()}
    except Exception as exc:
        if not store_unavailable(exc):
            raise
        return dict(specs)  # the store down: the document without them
