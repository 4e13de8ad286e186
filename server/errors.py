"""OpenAI-shaped errors: one exception type, and the FastAPI handlers that render every failure as
``{"error": {"message", "type", "param", "code"}}`` with the right HTTP status."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.schemas import ErrorInfo, ErrorResponse

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    """An error that becomes an OpenAI error body with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorInfo(
            message=self.message, type=_TYPES.get(self.status, "api_error"),
            param=self.param, code=self.code))

    def response(self) -> JSONResponse:
        return JSONResponse(self.body().model_dump(), status_code=self.status, headers=self.headers)


def validation_error(exc: RequestValidationError) -> APIError:
    """Turn pydantic/FastAPI validation errors into one 400 naming the first bad parameter."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return APIError(400, "request body is not valid JSON: "
                        f"{first.get('ctx', {}).get('error', first.get('msg'))}", code="invalid_json")
    if kind == "extra_forbidden":
        return APIError(400, f"unsupported parameter: '{param}'", param=param,
                        code="unsupported_parameter")
    if kind == "missing":
        return APIError(400, f"missing required parameter: '{param}'", param=param,
                        code="missing_required_parameter")
    if param is None and kind in ("model_type", "dict_type"):
        return APIError(400, "request body must be a JSON object", code="invalid_json")
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return APIError(400, f"invalid value for '{param}': {message}" if param else message,
                    param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        try:
            phrase = HTTPStatus(exc.status_code).phrase
        except ValueError:
            phrase = "error"
        detail = exc.detail if isinstance(exc.detail, str) else phrase
        return APIError(exc.status_code, detail, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}").response()
