"""`ownllm serve`: an OpenAI-compatible API (FastAPI) and a web chat page for one model.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with
``stream``: server-sent events in OpenAI's shape, ending in ``data: [DONE]``), ``POST /v1/feedback``
(what a person said about an answer, appended to the run's feedback.jsonl), ``GET /health`` and
the chat page at ``/``. Every field is checked; a client's mistake gets a 400 in OpenAI's error
JSON naming the field. A bounded queue sits in front of ``max_concurrency`` generations; past it a
request gets a fast 429 with ``Retry-After``. A client that disconnects, or a request that runs
past ``request_timeout``, stops its generation and frees its slot; one that leaves while it waits gives its
place in the queue up.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Literal, Union

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ownllm.web.common import APIError, Guard, add_page, install_errors_and_guard, warn_if_exposed
from ownllm.web.generation_queue import GenerationQueue, as_api_error, limit_malloc_arenas
from ownllm.web.settings import ConnectionLimits

log = logging.getLogger("ownllm.serve")
StrictNumber = Annotated[float, Field(strict=True)]  # an int or a float; not a bool, not a string
STATIC = os.path.join(os.path.dirname(__file__), "static")
OPEN_PATHS = {"/", "/health", "/favicon.ico"}  # no API key needed: the page itself and the health check


@dataclass
class ServeSettings:
    model_id: str
    api_key: str | None = None
    max_concurrency: int = 4
    max_queue: int = 32
    request_timeout: float = 120.0
    system: str | None = None
    host: str = "127.0.0.1"                 # the address it is bound to (a name here is an allowed Host)
    allowed_hosts: tuple[str, ...] = ()     # other names clients may use in Host (--allowed-host)
    max_request_bytes: int | None = None    # request-body limit; None: from the model's context
    batching: bool = True                   # concurrent requests share decode steps (ownllm.models.batching)
    engine: dict | None = None              # how the model was chosen to run (ownllm.serving.engines), for /health
    max_tokens: int | None = None           # the operator's ceiling on a request's max_tokens (--max-tokens)
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)  # what a slow client may hold
    feedback: str | None = None             # the feedback.jsonl POST /v1/feedback appends to (None: the route is off)
    answering: str | None = None            # what is served, named in feedback rows by ownllm.data.feedback.model_id


# -- requests ----------------------------------------------------------------------------------------
class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields are ignored, as OpenAI-compatible servers do
    model: str
    # strict: a JSON true or "5" is a client's mistake, not a number
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: StrictNumber | None = Field(None, ge=0, le=2)
    top_p: StrictNumber | None = Field(None, gt=0, le=1)
    top_k: StrictInt | None = Field(None, ge=0)                       # ownllm extension
    repetition_penalty: StrictNumber | None = Field(None, gt=0, le=5)  # ownllm extension
    presence_penalty: StrictNumber = Field(0, ge=-2, le=2)
    frequency_penalty: StrictNumber = Field(0, ge=-2, le=2)
    stop: Union[StrictStr, list[StrictStr], None] = None
    seed: StrictInt | None = Field(None, ge=0, le=2 ** 64 - 1)  # torch's generators take 64 bits
    n: StrictInt = Field(1, ge=1)
    stream: StrictBool = False
    stream_options: dict | None = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]


# fields we refuse instead of silently ignoring: each would change what the client gets back
_REFUSED = {
    "chat_template": "a chat template sent in a request is refused: the server uses the model's own",
    "chat_template_kwargs": "chat template arguments are refused: the server uses the model's own template",
    "tools": "tool calling is not supported by this server", "functions": "function calling is not supported",
    "suffix": "suffix (fill-in-the-middle) is not supported", "top_logprobs": "logprobs are not supported",
}


class FeedbackRequest(BaseModel):
    """POST /v1/feedback (an ownllm route): what a person said about one answer of this server."""
    model_config = ConfigDict(extra="forbid")
    messages: list[Message]                 # the conversation up to and including the question
    answer: StrictStr                       # the answer the server gave
    label: Literal["good", "bad"] | None = None
    better: StrictStr | None = None         # a better answer the person wrote


def _refuse_unsupported(req: _Sampling) -> None:
    extra = req.model_extra or {}
    for name, why in _REFUSED.items():
        if extra.get(name) not in (None, [], {}):
            raise APIError(400, why, param=name, code="unsupported_parameter")
    for name in ("logprobs", "echo"):
        if extra.get(name) not in (None, False, 0):
            raise APIError(400, f"{name} is not supported by this server", param=name, code="unsupported_parameter")
    if req.n != 1 or extra.get("best_of") not in (None, 1):
        raise APIError(400, "only n=1 (one choice per request) is supported", param="n", code="unsupported_parameter")
    fmt = extra.get("response_format")
    if fmt not in (None, {}) and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise APIError(400, "response_format other than text is not supported", param="response_format")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise APIError(400, f"{name} is not supported (transformers has no additive penalty); use "
                                "repetition_penalty (1.0 = off, 1.1 = the guide's default) instead", param=name,
                           code="unsupported_parameter")
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    if len(stops) > 4 or not all(stops):
        raise APIError(400, "stop must be up to 4 non-empty strings", param="stop")


def _message_text(m: Message) -> str:
    return m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)


def _plain_messages(messages: list[Message]) -> list[dict]:
    """OpenAI messages as the chat template takes them: text content, ``developer`` read as ``system``."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": _message_text(m)} for m in messages]


# -- the app ------------------------------------------------------------------------------------------
def create_app(model, settings: ServeSettings):
    """The FastAPI app serving ``model`` (an ``OwnModel``: transformers, peft, bitsandbytes or ONNX)."""
    from ownllm.models.batching import Batcher, can_batch

    queue = GenerationQueue(settings.max_concurrency, settings.max_queue, settings.request_timeout)
    app = FastAPI(title="ownllm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.queue = queue
    # the queue's slots are the batch: up to max_concurrency requests decode in one forward pass per token
    batcher = Batcher(model, settings.max_concurrency) if settings.batching and can_batch(model) else None
    app.state.batcher = batcher
    server = _Responder(model, settings, queue, batcher.stream if batcher else model.stream)

    limit = settings.max_request_bytes or default_body_limit(model.context_length)
    install_errors_and_guard(app, Guard(bound_host=settings.host, allowed_hosts=settings.allowed_hosts,
                                        api_key=settings.api_key, max_body=limit,
                                        body_timeout=settings.limits.body_timeout,
                                        is_open=lambda path: path in OPEN_PATHS or path.startswith("/static/")))

    add_page(app, STATIC, ("chat.js", "chat.css"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_id, "generating": queue.active, "waiting": queue.waiting,
                "engine": (settings.engine or {}).get("engine"), "dtype": (settings.engine or {}).get("dtype"),
                "batching": batcher is not None}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_id, "object": "model", "created": int(time.time()),
                                            "owned_by": "ownllm"}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        messages = _plain_messages(req.messages)
        if settings.system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": settings.system})
        if not any(m["role"] == "user" for m in messages):
            raise APIError(400, "messages must hold at least one user message", param="messages")
        return await server.respond(req, request, messages, chat=True)

    @app.post("/v1/feedback")
    async def feedback(req: FeedbackRequest):
        from ownllm.data.feedback import Feedback, model_id, record
        from ownllm.errors import DataError

        if not settings.feedback:
            raise APIError(404, "this server keeps no feedback: serve a run directory, or start it with "
                                "--feedback FILE", code="feedback_off")
        # which weights answered: hashed on the first feedback, not at start-up (a full model is gigabytes)
        answering = await asyncio.to_thread(model_id, settings.answering) if settings.answering else None
        row = Feedback(messages=_plain_messages(req.messages), answer=req.answer, label=req.label, better=req.better,
                       model=answering, source="serve")
        try:
            await asyncio.to_thread(record, settings.feedback, row)  # the lock and fsync wait off the event loop
        except DataError as e:
            raise APIError(400, str(e), param="feedback") from e
        return {"object": "feedback", "saved": True, "model": answering}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, "prompt must be a string or a list of exactly one string", param="prompt")
            prompt = prompt[0]
        if not prompt:
            raise APIError(400, "prompt is empty", param="prompt")
        return await server.respond(req, request, prompt, chat=False)

    return app


class _Responder:
    """One request's way through the server: checks, generation in the queue, the answer or its SSE stream."""

    def __init__(self, model, settings: ServeSettings, queue: GenerationQueue, stream):
        self.model, self.settings, self.queue, self.stream = model, settings, queue, stream

    async def respond(self, req: _Sampling, request, prompt, chat: bool):
        _refuse_unsupported(req)
        if req.model != self.settings.model_id:
            raise APIError(400, f"unknown model '{req.model}'; this server serves '{self.settings.model_id}'",
                           param="model", code="model_not_found")
        self.queue.refuse_if_full()  # before tokenizing: a flood is answered at once
        kwargs = await asyncio.to_thread(_generation_kwargs, self.model, req, prompt, chat,
                                         self.settings.max_tokens)  # tokenizing is CPU work
        arrived = time.monotonic()

        def work(cancel, stats):
            return self.stream(prompt, chat=chat, cancel=cancel, stats=stats, **kwargs)

        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        info = {"id": rid, "created": int(time.time()), "model": self.settings.model_id,
                "object": "chat.completion" if chat else "text_completion"}
        if req.stream:
            events, cancel, stats, timed_out = await self.queue.begin(work, arrived + self.settings.request_timeout,
                                                                      request)
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(self.sse(events, cancel, stats, timed_out, info, chat, include_usage, arrived),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, stats, first = await self.queue.collect(work, request, arrived + self.settings.request_timeout)
        answer = "".join(text)
        _log_latency(info, stats, arrived, first)
        choice = ({"index": 0, "message": {"role": "assistant", "content": answer}, "logprobs": None,
                   "finish_reason": _finish(stats)} if chat else
                  {"index": 0, "text": answer, "logprobs": None, "finish_reason": _finish(stats)})
        return {**info, "choices": [choice], "usage": _usage(stats)}

    async def sse(self, events, cancel, stats, timed_out, info, chat: bool, include_usage: bool, arrived: float):
        obj = "chat.completion.chunk" if chat else "text_completion"
        base = {"id": info["id"], "object": obj, "created": info["created"], "model": info["model"]}

        def chunk(delta=None, finish=None, **extra):
            if chat:
                choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": (delta or {}).get("content", ""), "logprobs": None, "finish_reason": finish}
            return "data: " + json.dumps({**base, "choices": [choice], **extra}, ensure_ascii=False) + "\n\n"

        first = None
        try:
            if chat:
                yield chunk({"role": "assistant", "content": ""})
            while True:
                kind, value = await events.get()
                if kind == "item":
                    first = first or time.monotonic()
                    yield chunk({"content": value})
                elif kind == "error":
                    yield "data: " + json.dumps(as_api_error(value).body(), ensure_ascii=False) + "\n\n"
                    break
                else:
                    if timed_out.is_set():
                        yield "data: " + json.dumps(self.queue.timeout_error().body()) + "\n\n"
                        break
                    yield chunk({}, _finish(stats))
                    if include_usage:
                        yield "data: " + json.dumps({**base, "choices": [], "usage": _usage(stats)}) + "\n\n"
                    _log_latency(info, stats, arrived, first)
                    break
            yield "data: [DONE]\n\n"
        finally:  # also reached when the client disconnects: stop generating, free the slot
            cancel.set()


def default_body_limit(context: int | None) -> int:
    """A request body big enough for a full context window of text as JSON (≤ 4 bytes a character, ~4
    characters a token, escaping), at least 1 MiB: larger bodies can only be mistakes or floods."""
    return max(1 << 20, 64 * (context or 0))


def _generation_kwargs(model, req: _Sampling, prompt, chat: bool, ceiling: int | None = None) -> dict:
    """OwnModel generation settings from the request, with the context and the operator's ``ceiling`` on
    new tokens checked up front."""
    from jinja2.exceptions import TemplateError

    from ownllm.errors import ConfigError

    max_tokens = req.max_completion_tokens or req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    if ceiling and max_tokens and max_tokens > ceiling:
        raise APIError(400, f"{param} is at most {ceiling} on this server (--max-tokens)", param=param)
    try:
        text = model.render_chat(prompt) if chat else prompt
    except TemplateError as e:  # the template's own raise_exception: e.g. roles that do not alternate
        raise APIError(400, f"the model's chat template refused these messages: {e}", param="messages") from None
    prompt_tokens = len(model.tokenizer(text, add_special_tokens=not chat)["input_ids"])
    context = model.context_length
    if context and prompt_tokens >= context:
        raise APIError(400, f"the prompt has {prompt_tokens} tokens; the model's context is {context}",
                       param="messages" if chat else "prompt", code="context_length_exceeded")
    if context and max_tokens and prompt_tokens + max_tokens > context:
        raise APIError(400, f"the prompt ({prompt_tokens} tokens) plus {param} ({max_tokens}) is "
                            f"{prompt_tokens + max_tokens}, beyond the model's context of {context}",
                       param=param, code="context_length_exceeded")
    default = min(256, ceiling or 256)
    kwargs = {"max_new_tokens": max_tokens or (min(default, context - prompt_tokens) if context else default),
              "temperature": 0.7 if req.temperature is None else req.temperature,
              "top_p": 0.9 if req.top_p is None else req.top_p, "top_k": 50 if req.top_k is None else req.top_k,
              "repetition_penalty": 1.1 if req.repetition_penalty is None else req.repetition_penalty,
              "seed": req.seed, "stop": req.stop}
    try:
        from ownllm.models.generation import GenerationSettings

        GenerationSettings.build(**kwargs)
    except ConfigError as e:
        raise APIError(400, str(e)) from None
    return kwargs


def _finish(stats: dict) -> str:
    return "length" if stats.get("finish_reason") == "length" else "stop"


def _usage(stats: dict) -> dict:
    p, c = stats.get("prompt_tokens", 0), stats.get("completion_tokens", 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _log_latency(info: dict, stats: dict, arrived: float, first: float | None) -> None:
    now = time.monotonic()
    ttft = (first - arrived) if first else float("nan")
    new = stats.get("completion_tokens", 0)
    rate = new / (now - first) if first and now > first and new > 1 else float("nan")
    log.info("%s %s: prompt %d tokens, %d new, time to first token %.3f s, %.1f tokens/s, finish %s",
             info["object"], info["id"], stats.get("prompt_tokens", 0), new, ttft, rate, stats.get("finish_reason"))


def model_id_for(source: str) -> str:
    """The name clients use in ``model``: the run's folder name, or the alias."""
    path = os.path.abspath(source) if os.path.exists(source) else source
    if os.path.exists(path):
        parts = path.rstrip("/").split(os.sep)
        if parts[-1] == "model.onnx":
            parts = parts[:-1]
        if "export" in parts:  # runs/clinic/export/onnx → clinic-onnx
            i = parts.index("export")
            return "-".join([parts[i - 1]] + parts[i + 1:]).removesuffix(".onnx")
        return parts[-1].removesuffix(".onnx")
    return source


def serve(source: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_concurrency: int = 4, max_queue: int = 32, request_timeout: float = 120.0,
          system: str | None = None, device: str = "auto", dtype: str = "auto", allowed_hosts: tuple[str, ...] = (),
          max_request_bytes: int | None = None, merge: bool = True, engine: str = "auto",
          batching: bool = True, max_tokens: int | None = None, limits: ConnectionLimits | None = None,
          feedback: str | None = None) -> None:
    """Load ``source`` with ``engine`` (ownllm.serving.engines) and serve it until Ctrl-C; ``feedback``: where
    POST /v1/feedback rows go (default: RUN/feedback.jsonl when ``source`` is a run directory)."""
    from ownllm.data.feedback import feedback_path
    from ownllm.serving.engines import describe, load_engine
    from ownllm.web.server import run_server

    limit_malloc_arenas()
    model, chosen = load_engine(source, engine, device=device, dtype=dtype, merge=merge,
                                concurrency=max_concurrency if batching else 1)
    print(describe(chosen), flush=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # request lines from here on
    settings = ServeSettings(model_id=model_id_for(source), api_key=api_key, max_concurrency=max_concurrency,
                             max_queue=max_queue, request_timeout=request_timeout, system=system, host=host,
                             allowed_hosts=tuple(allowed_hosts), max_request_bytes=max_request_bytes,
                             batching=batching, engine=chosen, max_tokens=max_tokens,
                             limits=limits or ConnectionLimits(), feedback=feedback_path(source, feedback),
                             answering=source)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"serving '{settings.model_id}' at http://{shown}:{port}/ (chat page) and http://{shown}:{port}/v1 "
          f"(OpenAI API){'; API key required' if api_key else ''}. Ctrl-C stops.", flush=True)
    warn_if_exposed(host, api_key, "ownllm serve")
    run_server(create_app(model, settings), host, port, settings.limits)
