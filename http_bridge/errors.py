"""One place that turns every failure into the old envelope with a real status.

The old API answered every error with HTTP 200 and `success: false`. Clients
that only read the envelope keep working (same keys, `error` is still the
message); the status now says what happened and `code` is the stable code.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engines.errors import InvalidRequest, TfstreamError

log = logging.getLogger(__name__)


def envelope(data: Any = None) -> dict[str, Any]:
    return {"success": True, "data": data, "error": ""}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "data": None, "error": message, "code": code}


#: Seconds a client should wait before asking again after a retryable 503.
RETRY_AFTER_S = "5"


def error_entry(error: TfstreamError) -> dict[str, Any]:
    """An error inside an answer that is not itself an error (one entry of a list)."""
    return {"code": error.code, "error": error.message, "retryable": error.retriable}


def error_response(error: TfstreamError) -> JSONResponse:
    retry = error.retriable and error.http_status == 503
    headers = {"Retry-After": RETRY_AFTER_S} if retry else None
    return JSONResponse(
        error_body(error.code, error.message), status_code=error.http_status, headers=headers
    )


async def _tfstream_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TfstreamError)
    return error_response(exc)


def _field(location: Any) -> str:
    return ".".join(str(part) for part in location if part != "body") or "request"


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{_field(err.get('loc', ()))}: {err.get('msg')}" for err in exc.errors())
    return error_response(InvalidRequest(problems or "invalid request"))


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, TfstreamError):  # FastAPI wraps errors raised while parsing a body
        return error_response(exc.__cause__)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    """The details go to the log only: an exception's text can hold paths, hosts or data."""
    log.exception("unexpected error", exc_info=exc)
    return JSONResponse(
        error_body("internal_error", "internal error; the server log has the details"),
        status_code=500,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(TfstreamError, _tfstream_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
