"""Every error the API answers is JSON ``{"error": {"code", "message"}}``.

Bad input is refused with a fitting 4xx naming what was wrong; only a bug reaches the
last-resort handler, which logs it and answers a bare 500 without internals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from crmsync.errors import ValidationFailed
from crmsync.store.records import NotFound
from crmsync.web.auth import API_PREFIX, require_api_auth

log = logging.getLogger(__name__)

# Codes by HTTP status for errors raised as plain HTTPExceptions (routing, auth).
_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    502: "dynamics_unavailable",
    503: "unavailable",
}
# Where FastAPI's validation errors say the bad value was; the rest of loc is the field.
_SOURCES = {"body", "query", "path", "header", "cookie"}


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    detail: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        detail["field"] = field
    return JSONResponse({"error": detail}, status_code=status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the error shape for ``statuses``."""
    return {
        status: {"model": ErrorBody, "description": _CODES.get(status, "invalid_field")}
        for status in statuses
    }


def field_of(loc: tuple[int | str, ...] | list[int | str]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in _SOURCES:
        parts = parts[1:]
    return ".".join(parts) or "body"


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """The JSON answer to an ``HTTPException`` (the console answers browsers' 404s with
    a page and hands the rest here: ``web/console``)."""
    assert isinstance(exc, HTTPException)
    code = _CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such resource: {request.url.path}"
    elif exc.status_code == 405 and message == "Method Not Allowed":
        message = f"method {request.method} not allowed on {request.url.path}"
    return error_response(exc.status_code, code, message, headers=exc.headers)


def _refused(request: Request) -> HTTPException | None:
    """The 401 an unauthenticated API call gets. FastAPI reads and validates the body
    before it runs the route's dependencies, auth included; without this a caller with
    no credentials would learn about the body's shape (400/422) before being refused."""
    if not request.url.path.startswith(f"{API_PREFIX}/"):
        return None
    try:
        require_api_auth(request, None)
    except HTTPException as refusal:
        return refusal
    return None


async def _request_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    refusal = _refused(request)
    if refusal is not None:
        return await http_error(request, refusal)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        return error_response(400, "malformed_json", f"request body is not valid JSON: {reason}")
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    field = field_of(first.get("loc", ()))
    if first.get("type") == "missing":
        message = f"{field}: required"
    else:
        message = f"{field}: {first.get('msg', 'invalid value')}"
    return error_response(422, "invalid_field", message, field=field)


async def _validation_failed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationFailed)
    return error_response(422, "invalid_field", f"{exc.field}: {exc.message}", field=exc.field)


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return error_response(404, "not_found", str(exc))


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # Locked or unreachable store: worth retrying, and never the client's fault.
    log.warning(
        "store unavailable", extra={"event": "api.store_unavailable", "path": request.url.path}
    )
    return error_response(
        503,
        "store_unavailable",
        "the store is unavailable; try again",
        headers={"Retry-After": "1"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "unhandled error",
        exc_info=exc,
        extra={"event": "api.unhandled_error", "method": request.method, "path": request.url.path},
    )
    return error_response(500, "internal_error", "internal error; it has been logged")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(ValidationFailed, _validation_failed)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(OperationalError, _store_unavailable)
    app.add_exception_handler(Exception, _unexpected)
