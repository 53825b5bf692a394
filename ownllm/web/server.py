"""How both web servers listen: uvicorn with limits on what a slow client can hold.

uvicorn has no deadline for a request's head (a client trickling its headers a byte a second holds a
connection for ever: its keep-alive timer is reset by every byte) and no cap on open connections that
keeps the server answering (``limit_concurrency`` answers *every* new request 503 while slow clients fill
it). So connections are served by ``LimitedH11Protocol``, uvicorn's own h11 protocol plus:

- a head deadline: a request's line and headers must arrive within ``header_timeout`` of the
  connection's opening or of the request's first byte, else 408 and the connection is closed;
- a connection cap: at ``max_connections``, the connection that has been sending its request longest
  (head or body), else the one idle longest, is closed for the new one; only when every connection is
  busy with a request the server is answering does the new one get a 503.

The body's deadline (``body_timeout``) is kept by the requests' guard (``web.common.Guard``), which
knows an upload from a question and answers in the API's error shape.
"""
from __future__ import annotations

import json
import logging
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

from ownllm.web.settings import ConnectionLimits

log = logging.getLogger("ownllm.web")


def _raw_answer(status: int, reason: str, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 error response in the API's error shape, that closes the connection (written
    below the ASGI app, where no request exists yet)."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error" if status < 500 else
                                 "server_error", "param": None, "code": code}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


_closed = {"count": 0, "logged": 0.0}
LOG_EVERY_SECONDS = 60.0  # one line a minute however many slow clients: a line each would flood the log


def _note_closed(timeout: float) -> None:
    _closed["count"] += 1
    now = time.monotonic()
    if now - _closed["logged"] >= LOG_EVERY_SECONDS:
        log.warning("closed %d connection(s) that sent no complete request head within %g s (--header-timeout) "
                    "since the last such line", _closed["count"], timeout)
        _closed["count"], _closed["logged"] = 0, now


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a head deadline and a connection cap (the limits ride on the uvicorn
    config as ``ownllm_limits``). Reads ``cycle``, ``connections`` and ``transport`` of H11Protocol.

    A connection is *receiving* from its opening, or its next request's first byte, until its request's
    body has all arrived; then *busy* until its response is complete; then *idle* (keep-alive). At the
    cap, the connection receiving longest is closed for the new one, else the one idle longest; a busy
    one never is. A client sending a request at network speed is receiving for a moment only, so the
    closed connections are the slow ones."""

    def connection_made(self, transport) -> None:
        limits: ConnectionLimits = self.config.ownllm_limits
        self._head_timer, self._receiving, self._since = None, True, time.monotonic()
        if len(self.connections) >= limits.max_connections and not self._make_room():
            self.transport = transport  # connection_lost closes it
            transport.write(_raw_answer(503, "Service Unavailable", f"the server has {limits.max_connections} "
                                        "connections busy with requests (--max-connections); retry soon",
                                        "too_many_connections"))
            transport.close()
            return
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self._receiving and not self._in_request():  # an idle connection's next request begins
            self._receiving, self._since = True, time.monotonic()
        super().data_received(data)
        if self._in_request():
            self._disarm()  # the head is in (the guard keeps the body's deadline)
            if not self.cycle.more_body:
                self._receiving = False
        elif self._head_timer is None and not self.transport.is_closing():
            self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._receiving, self._since = False, time.monotonic()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _in_request(self) -> bool:
        """A request's head has arrived and its response is not finished."""
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.config.ownllm_limits.header_timeout, self._head_late)

    def _disarm(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._in_request() or self.transport.is_closing():
            return
        timeout = self.config.ownllm_limits.header_timeout
        _note_closed(timeout)
        self.transport.write(_raw_answer(408, "Request Timeout", f"the request's line and headers did not arrive "
                                         f"within {timeout:g} s (--header-timeout)", "request_timeout"))
        self.transport.close()

    def _make_room(self) -> bool:
        """Close the connection receiving longest, else the one idle longest; False if all are busy."""
        open_ = [c for c in self.connections if isinstance(c, LimitedH11Protocol) and not c.transport.is_closing()]
        receiving = [c for c in open_ if c._receiving]
        idle = [c for c in open_ if not c._receiving and not c._in_request()]
        if not (receiving or idle):
            return False
        victim = min(receiving or idle, key=lambda c: c._since)
        victim._disarm()
        victim.transport.close()
        victim.connections.discard(victim)  # counted free now: the close completes on the loop's next turn
        return True


def make_server(app, host: str, port: int, limits: ConnectionLimits | None = None):
    """A ``uvicorn.Server`` for ``app`` on ``host:port`` whose connections keep ``limits``."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", http=LimitedH11Protocol,
                            timeout_keep_alive=5)
    config.ownllm_limits = limits or ConnectionLimits()
    return uvicorn.Server(config)


def run_server(app, host: str, port: int, limits: ConnectionLimits | None = None) -> None:
    """Serve ``app`` until Ctrl-C."""
    make_server(app, host, port, limits).run()
