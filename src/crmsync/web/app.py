"""The web application: JSON API (and, later, the console) over one store engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine

from crmsync.config import Settings
from crmsync.store.db import create_store_engine
from crmsync.web import api_conflicts, api_errors, api_records, api_status, health, metrics
from crmsync.web.auth import CredentialCheck, bearer_token_check
from crmsync.web.errors import install_error_handlers

API_PREFIX = "/api/v1"


def create_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    """Build the app. Without ``engine`` one is created from settings (and disposed of
    at shutdown); a given engine stays the caller's."""
    own_engine = engine is None
    store = engine if engine is not None else create_store_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upkeep = asyncio.create_task(health.ops_loop(app))
        yield
        upkeep.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upkeep
        if own_engine:
            store.dispose()

    app = FastAPI(
        title="crmsync",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = store
    app.state.specs = settings.object_specs()
    # Anything that may authenticate an API call; the console session login appends its
    # own check here (see web/auth.py).
    checks: list[CredentialCheck] = []
    if settings.api_token is not None and settings.api_token.get_secret_value():
        checks.append(bearer_token_check(settings.api_token))
    app.state.credential_checks = checks

    install_error_handlers(app)
    app.include_router(api_records.router)
    app.include_router(api_status.router)
    app.include_router(api_errors.router)
    app.include_router(api_conflicts.router)
    health.install(app, settings)
    app.state.metrics = metrics.MetricsPage(store, app.state.specs, app.state.alerts)
    app.include_router(metrics.router)
    return app
