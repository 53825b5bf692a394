"""What both web servers (`ownllm serve` and `ownllm studio`) share: errors in OpenAI's JSON shape,
the page's security headers, the API-key check, and the page with its static files."""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Callable

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


LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
FORM_TYPES = {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}  # what an HTML form sends
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass
class Guard:
    """What every request must pass before it reaches a route, checked on the raw ASGI request (a pure
    middleware: ``@app.middleware("http")`` would stop ``request.is_disconnected()`` from ever seeing a
    client leave):

    - ``Host`` names this server: an IP address, localhost, the bound name or an ``--allowed-host``
      (else 421: a page on another site that rebinds its DNS name to this machine carries its own name);
    - a request that changes state (not GET/HEAD/OPTIONS) from a browser comes from this server's own
      page: a foreign ``Origin`` gets 403, and so do the content types an HTML form can send without
      asking (form fields, multipart, text/plain) unless a header that forms cannot set comes with them;
    - a body is at most ``max_body`` bytes (413), except on ``upload_paths``, which stream and cap it;
    - a body arrives within ``body_timeout`` seconds (an upload: between two of its pieces), else 408;
    - ``Authorization: Bearer KEY`` on every path that ``is_open`` does not open (401).
    """

    bound_host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    api_key: str | None = None
    is_open: Callable[[str], bool] = lambda path: False
    max_body: int = 1 << 20
    upload_paths: tuple[str, ...] = ()
    body_timeout: float = 30.0

    def host_allowed(self, host: str) -> bool:
        name = _hostname(host)
        if not name:
            return False
        try:
            ipaddress.ip_address(name)
            return True  # an address literal cannot be a rebound DNS name
        except ValueError:
            pass
        return name in LOOPBACK_NAMES | {self.bound_host.lower()} | {h.lower() for h in self.allowed_hosts}

    def problem(self, method: str, path: str, headers: dict[str, str]) -> APIError | None:
        """The first rule the request breaks, as the error to answer, or None."""
        host = headers.get("host", "")
        if not self.host_allowed(host):
            return APIError(421, f"this server does not answer to the host name '{host}'; start it with "
                                 f"--allowed-host {_hostname(host) or 'NAME'} if that name is yours",
                            code="host_not_allowed")
        if method not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and not self._same_origin(origin, host):
                return APIError(403, f"requests from another site ({origin}) are refused; use this server's own page "
                                     "or a client that sends no Origin header", code="cross_origin")
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype in FORM_TYPES and not {"authorization", "x-filename"} & headers.keys():
                return APIError(415, f"a {ctype} body is refused here (it is what a form on another site can send); "
                                     "send JSON with Content-Type: application/json", code="unsupported_media_type")
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body and path not in self.upload_paths:
                return _too_large(self.max_body)
        if self.api_key and not self.is_open(path):
            if not key_matches(headers.get("authorization", ""), self.api_key):
                return APIError(401, "missing or incorrect API key (send Authorization: Bearer KEY)",
                                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return None

    def _same_origin(self, origin: str, host: str) -> bool:
        from urllib.parse import urlsplit

        try:
            netloc = urlsplit(origin).netloc.lower()
        except ValueError:  # "http://[": no origin this server could have sent
            return False
        return netloc == host.lower() or _hostname(netloc) in {h.lower() for h in self.allowed_hosts}

    def middleware(self, app):
        """``app`` wrapped: requests that break a rule are answered here, in OpenAI's error shape."""
        guard = self

        async def guarded(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            err = guard.problem(scope["method"], scope["path"], headers)
            if err is not None:
                return await _answer(err, send)
            if scope["method"] in SAFE_METHODS:
                return await app(scope, receive, send)
            if scope["path"] in guard.upload_paths:  # streamed by the route: each piece has the deadline
                return await _paced(app, scope, receive, send, guard.body_timeout)
            return await _buffered(app, scope, receive, send, guard.max_body, guard.body_timeout)

        return guarded


async def _buffered(app, scope, receive, send, limit: int, timeout: float) -> None:
    """Read the body up to ``limit`` bytes (413 past it; a chunked body is counted as it arrives) within
    ``timeout`` seconds (408 past it, the connection closed); then hand it to ``app`` in one piece, and
    later ``receive`` calls to the client (so a disconnect is still seen)."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > limit:
                    return await _answer(_too_large(limit), send)
                if not message.get("more_body"):
                    break
    except TimeoutError:
        return await _answer(_body_late(timeout), send)
    body, given = b"".join(chunks), False

    async def replay():
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    await app(scope, replay, send)


async def _paced(app, scope, receive, send, timeout: float) -> None:
    """``app`` reading a streamed body itself, each piece due within ``timeout`` seconds of the last: a late
    piece raises the 408 inside the route's read, which answers it (and drops what it had written)."""
    done = False

    async def paced_receive():
        nonlocal done
        if done:
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), timeout)
        except TimeoutError:
            raise _body_late(timeout) from None
        done = message["type"] != "http.request" or not message.get("more_body")
        return message

    await app(scope, paced_receive, send)


def _body_late(timeout: float) -> APIError:
    return APIError(408, f"the request body did not arrive within {timeout:g} s (--body-timeout)",
                    code="request_timeout", headers={"Connection": "close"})


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit:,} bytes (--max-request-bytes)",
                    code="request_too_large")


def key_matches(authorization: str, api_key: str) -> bool:
    """``Authorization: Bearer KEY`` against the key, in constant time. Headers arrive as latin-1 text: back
    to their bytes, compared with the key's UTF-8 bytes (so a non-ASCII key works)."""
    token = authorization[7:] if authorization.lower().startswith("bearer ") else ""
    return hmac.compare_digest(token.encode("latin-1", "replace"), api_key.encode("utf-8"))


def _hostname(host: str) -> str:
    """'example.com:8000' -> 'example.com'; '[::1]:8000' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _answer(err: APIError, send) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install_errors_and_guard(app, guard: Guard) -> None:
    """Every error answered as {"error": {...}} JSON (the route's own, a malformed body, an unknown path or
    method, a body over the limit), and ``guard`` in front of every request."""
    from starlette.exceptions import HTTPException

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            return JSONResponse(APIError(400, "the request body is not valid JSON (or not UTF-8)").body(),
                                status_code=400)
        param = ".".join(loc) or None
        return JSONResponse(APIError(400, f"{param or 'body'}: {err.get('msg')}", param=param).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        err = APIError(exc.status_code, message.get(exc.status_code, str(exc.detail)), kind=kind)
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    app.add_middleware(_GuardMiddleware, guard=guard)


class _GuardMiddleware:
    """Starlette's middleware protocol around ``Guard.middleware`` (pure ASGI, so disconnects are seen)."""

    def __init__(self, app, guard: Guard):
        self.app = guard.middleware(app)

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    return _hostname(host) in LOOPBACK_NAMES


def warn_if_exposed(host: str, api_key: str | None, command: str) -> None:
    """Binding to a non-loopback address without a key lets anyone on the network in: say so, loudly."""
    if not is_loopback(host) and not api_key:
        print(f"warning: {command} listens on {host} without --api-key: anyone who can reach this machine can use "
              "it (and, for the studio, read files under its data roots)", flush=True)


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
