"""The generation queue both web servers use: slots, a bounded queue, a deadline and cancellation.

(Not to be confused with ``serving/engines.py``: an engine there is *what* generates — torch, onnxruntime,
llama.cpp; this queue decides *when* a request's generation runs.)

``serve`` runs one model's stream in it; the studio runs its base-and-tuned chat pair in it. A
generation runs in a thread of its own; the request's coroutine reads what it yields from a queue,
so the event loop stays free for every other client.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import threading
import time
from typing import Callable, Iterator

from ownllm.web.common import APIError

log = logging.getLogger("ownllm.web")
# how often a request looks whether its client is still there (while it waits for a slot and while it generates)
DISCONNECT_POLL_SECONDS = 0.25

Work = Callable[[threading.Event, dict], Iterator]  # (cancel, stats) -> what the generation yields


class GenerationQueue:
    """Runs generations in threads: at most ``max_concurrency`` at once, ``max_queue`` waiting; a
    request past the queue gets a fast 429, one past ``request_timeout`` a 504 (``timeout_flag`` is
    the option that sets it, named in that message)."""

    def __init__(self, max_concurrency: int = 4, max_queue: int = 32, request_timeout: float = 120.0,
                 timeout_flag: str = "--request-timeout"):
        self.max_concurrency, self.max_queue = max_concurrency, max_queue
        self.request_timeout, self.timeout_flag = request_timeout, timeout_flag
        self.active = self.waiting = 0
        self._slots: asyncio.Semaphore | None = None
        self._watchers: set[asyncio.Task] = set()

    def deadline(self) -> float:
        return time.monotonic() + self.request_timeout

    def timeout_error(self, waited: bool = False) -> APIError:
        what = "waited" if waited else "ran"
        return APIError(504, f"the request {what} past {self.timeout_flag} ({self.request_timeout:g} s)",
                        code="timeout", kind="server_error")

    def refuse_if_full(self) -> None:
        """The fast 429: called before any work on the request (tokenizing a long prompt included)."""
        if self.active >= self.max_concurrency and self.waiting >= self.max_queue:
            raise APIError(429, f"the server is busy ({self.active} generating, {self.waiting} waiting); retry soon",
                           code="rate_limit_exceeded", kind="rate_limit_error", headers={"Retry-After": "1"})

    async def acquire(self, deadline: float, request=None) -> None:
        """Wait for a slot until ``deadline`` (a 504 past it). With ``request``, a client that leaves while it
        waits gives its place up at once (``ClientGone``) instead of taking a slot later for nobody."""
        if self._slots is None:  # made on first use: it belongs to the running event loop
            self._slots = asyncio.Semaphore(self.max_concurrency)
        self.refuse_if_full()
        self.waiting += 1
        slot = asyncio.ensure_future(self._slots.acquire())
        try:
            while not slot.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.timeout_error(waited=True)
                await asyncio.wait({slot}, timeout=min(left, DISCONNECT_POLL_SECONDS))
                if not slot.done() and request is not None and await request.is_disconnected():
                    raise ClientGone()
        except BaseException:
            if slot.done() and not slot.cancelled() and slot.exception() is None:
                self._slots.release()  # it was granted as we gave up: hand it on
            else:
                slot.cancel()
            raise
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._slots.release()

    def start(self, work: Work, deadline: float, request=None):
        """Run ``work(cancel, stats)`` in a thread; returns (queue of events, cancel event, stats, timed-out flag).

        Events are ("item", value) for each value ``work`` yields, then ("end", None) or ("error", exc).
        The slot (taken with ``acquire``) is released when the thread has really finished, so a client
        that disconnects frees its slot only once its generation has stopped. With ``request``, a watcher
        sets ``cancel`` as soon as the client leaves, whether or not anything was sent to it yet.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel, stats, timed_out, done = threading.Event(), {}, threading.Event(), threading.Event()

        def put(kind, value=None):
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        def run():
            try:
                for value in work(cancel, stats):
                    put("item", value)
                put("end")
            except BaseException as e:  # handed to the request's coroutine, which answers it
                put("error", e)
            finally:
                timer.cancel()
                done.set()
                loop.call_soon_threadsafe(self.release)

        def expire():
            timed_out.set()
            cancel.set()

        timer = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
        timer.daemon = True
        timer.start()
        threading.Thread(target=run, daemon=True, name="ownllm-generate").start()
        if request is not None:
            watcher = loop.create_task(_watch_client(request, cancel, done))
            self._watchers.add(watcher)  # the loop keeps only weak references to tasks
            watcher.add_done_callback(self._watchers.discard)
        return events, cancel, stats, timed_out

    async def begin(self, work: Work, deadline: float, request=None):
        """``acquire`` then ``start`` (both watching ``request``'s client): the slot is given back if starting
        fails."""
        await self.acquire(deadline, request)
        try:
            return self.start(work, deadline, request)
        except BaseException:
            self.release()
            raise

    async def collect(self, work: Work, request, deadline: float | None = None) -> tuple[list, dict, float | None]:
        """Run ``work`` to its end for a non-streaming request: (values, stats, time of the first value).

        A client that leaves stops the generation at once (or gives its place in the queue up); a run past
        the deadline is a 504; an error raised by ``work`` becomes the answer's error.
        """
        deadline = deadline or self.deadline()
        events, cancel, stats, timed_out = await self.begin(work, deadline, request)
        values, first = [], None
        try:
            while True:
                kind, value = await events.get()
                if kind == "item":
                    first = first or time.monotonic()
                    values.append(value)
                elif kind == "error":
                    raise as_api_error(value)
                else:
                    break
        finally:
            cancel.set()
        if timed_out.is_set():
            raise self.timeout_error()
        return values, stats, first


async def _watch_client(request, cancel: threading.Event, done: threading.Event) -> None:
    """Set ``cancel`` when ``request``'s client has gone; ends with the generation."""
    while not (done.is_set() or cancel.is_set()):
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)


class ClientGone(APIError):
    """The client left before its answer began; nothing reaches it, so the status is only for logs."""

    def __init__(self):
        super().__init__(499, "the client closed the request", code="client_closed_request", kind="server_error")


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas for a server process. Each generation runs in new threads, and glibc
    gives threads arenas of their own (up to 8 per core) that keep freed memory: measured with
    benchmarks/serve_load.py, the server grew 13 % over two minutes of load, 2.5 % with 2 arenas.
    ``MALLOC_ARENA_MAX`` set by the person wins; on other C libraries this does nothing."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX; no library exposes mallopt
    except (OSError, AttributeError):
        pass


def as_api_error(e: BaseException) -> APIError:
    """The answer for an error raised while generating: ours as they are, a person's mistake (an
    ``OwnLLMError``) a 400, anything else a logged 500 that names only the exception's type."""
    from ownllm.errors import OwnLLMError

    if isinstance(e, APIError):
        return e
    if isinstance(e, OwnLLMError):
        return APIError(400, str(e))
    log.exception("generation failed", exc_info=e)
    return APIError(500, f"generation failed: {type(e).__name__}", kind="server_error")
