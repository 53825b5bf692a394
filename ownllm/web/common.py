"""What both web servers (`ownllm serve` and `ownllm studio`) share: errors in OpenAI's JSON shape,
the page's security headers, the API-key check, and the page with its static files."""
from __future__ import annotations

import hmac
import os

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                                           "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


class APIError(Exception):
    """An error answered in OpenAI's JSON shape: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def install_errors_and_auth(app, api_key: str | None, is_open) -> None:
    """Errors answered as {"error": {...}} JSON, and ``Authorization: Bearer KEY`` on every path not ``is_open``."""

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            return JSONResponse(APIError(400, "the request body is not valid JSON").body(), status_code=400)
        param = ".".join(loc) or None
        return JSONResponse(APIError(400, f"{param or 'body'}: {err.get('msg')}", param=param).body(), status_code=400)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key and not is_open(request.url.path):
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                err = APIError(401, "missing or incorrect API key (send Authorization: Bearer KEY)",
                               code="invalid_api_key")
                return JSONResponse(err.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)


def add_page(app, folder: str, files: tuple[str, ...]) -> None:
    """``GET /`` (``folder/index.html``) and ``GET /static/NAME`` for the listed files only, with PAGE_HEADERS."""

    @app.get("/")
    async def page():
        return FileResponse(os.path.join(folder, "index.html"), headers=PAGE_HEADERS)

    @app.get("/static/{name}")
    async def static(name: str):
        if name not in files:
            raise APIError(404, f"no static file '{name}'", kind="not_found_error")
        return FileResponse(os.path.join(folder, name), headers=PAGE_HEADERS)
