"""Generation on top of ``transformers.generate``: plain prompts, chat messages, streaming.

Defaults follow the guide's advice (temperature 0.7, top_p 0.9, repetition_penalty 1.1);
temperature 0 means greedy decoding. Every value is checked before anything runs.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, fields
from typing import Iterator

from ownllm.errors import ConfigError


@dataclass
class GenerationSettings:
    max_new_tokens: int | None = None   # new tokens; default 256 when max_length is not given either
    max_length: int | None = None       # prompt + new tokens (transformers' meaning)
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    do_sample: bool | None = None       # None: sample when temperature > 0
    seed: int | None = None
    stop: list[str] | None = None

    def problems(self) -> list[str]:
        p = []
        if self.max_new_tokens is not None and (not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1):
            p.append(f"max_new_tokens must be an integer >= 1 (got {self.max_new_tokens!r})")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            p.append(f"max_length must be an integer >= 1 (got {self.max_length!r})")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= 2:
            p.append(f"temperature must be between 0 and 2 (got {self.temperature!r}); 0 means greedy")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            p.append(f"top_p must be in (0, 1] (got {self.top_p!r})")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            p.append(f"top_k must be an integer >= 0 (got {self.top_k!r}); 0 disables it")
        if not isinstance(self.repetition_penalty, (int, float)) or not 0 < self.repetition_penalty <= 5:
            p.append(f"repetition_penalty must be in (0, 5] (got {self.repetition_penalty!r}); 1 disables it")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            p.append(f"seed must be an integer >= 0 (got {self.seed!r})")
        if self.stop is not None and not all(isinstance(s, str) and s for s in self.stop):
            p.append("stop must be a non-empty string or a list of non-empty strings")
        return p

    @classmethod
    def build(cls, **kwargs) -> "GenerationSettings":
        names = {f.name for f in fields(cls)}
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            raise ConfigError([f"unknown generation parameter '{k}'" for k in unknown],
                              hint=f"valid parameters: {', '.join(sorted(names))}")
        if isinstance(kwargs.get("stop"), str):
            kwargs["stop"] = [kwargs["stop"]]
        settings = cls(**{k: v for k, v in kwargs.items() if v is not None})
        problems = settings.problems()
        if problems:
            raise ConfigError(problems)
        return settings

    def hf_kwargs(self, prompt_len: int, context: int | None, user_len: int | None = None) -> dict:
        """transformers' generate() arguments. ``max_length`` counts the tokens the person wrote
        (``user_len``; the chat template's own tokens are not theirs) plus the new ones."""
        if self.max_new_tokens is not None:
            new = self.max_new_tokens
        elif self.max_length is not None:
            new = max(1, self.max_length - (prompt_len if user_len is None else user_len))
        else:
            new = 256
        if context and prompt_len + new > context:
            if prompt_len >= context:
                raise ConfigError(f"the prompt has {prompt_len} tokens; the model's context is {context}")
            new = context - prompt_len
        sample = self.temperature > 0 if self.do_sample is None else self.do_sample
        kw = dict(max_new_tokens=new, do_sample=sample, repetition_penalty=float(self.repetition_penalty))
        if sample:
            kw.update(temperature=float(self.temperature) or 1.0, top_p=float(self.top_p), top_k=self.top_k)
        else:  # greedy: leave sampling knobs unset so transformers does not warn about them
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """Text up to the first stop string, and whether one was found."""
    if not stop:
        return text, False
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def logits_processors(gen: dict):
    """transformers' logits processors for ``generate()`` arguments (``gen``, as :meth:`OwnModel._prepare`
    builds them), for decoding loops of our own: repetition penalty, the sampling warpers, then any the
    arguments carry (a request's seeded sampler)."""
    from transformers.generation import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                         TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    processors = LogitsProcessorList()
    penalty, temperature = gen.get("repetition_penalty"), gen.get("temperature")
    if penalty and penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty))
    if gen.get("do_sample"):
        if temperature and temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if gen.get("top_k"):
            processors.append(TopKLogitsWarper(gen["top_k"]))
        if gen.get("top_p") is not None and gen["top_p"] < 1.0:
            processors.append(TopPLogitsWarper(gen["top_p"]))
    processors.extend(gen.get("logits_processor") or [])
    return processors


class SeededSampler:
    """Sampling as a logits processor with its own ``torch.Generator``: temperature, top-k and top-p
    (transformers' own warpers), then one draw per row from this request's generator; every other token
    gets -inf, so generate's greedy step takes the drawn one. Same draws for the same seed, whatever else
    runs in the process."""

    def __init__(self, seed: int, temperature: float, top_k: int | None, top_p: float | None):
        import torch
        from transformers.generation import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.warpers = [TemperatureLogitsWarper(temperature)] if temperature and temperature != 1.0 else []
        if top_k:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids, scores):
        import torch

        for warp in self.warpers:
            scores = warp(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1).cpu()
        drawn = torch.multinomial(probs, 1, generator=self.generator).to(scores.device)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, drawn, 0.0)


class OwnModel:
    """A loaded model with its tokenizer: ``generate``, ``chat`` and ``stream``.

    ``.model`` and ``.tokenizer`` are the plain transformers objects.
    """

    merge_note: str | None = None  # why a run's adapter could not be folded into the weights (load_model(merge=True))

    def __init__(self, model, tokenizer, name: str = "", spec=None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.spec = spec

    def __repr__(self) -> str:
        return f"OwnModel({self.name!r}, params={self.num_parameters():,}, device={self.device})"

    @property
    def device(self):
        device = getattr(self.model, "device", None)  # an ONNX model has a device but no parameters
        return device if device is not None else next(self.model.parameters()).device

    @property
    def context_length(self) -> int | None:
        cfg = getattr(self.model, "config", None)
        return getattr(cfg, "max_position_embeddings", None) or (self.spec.context if self.spec else None)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # -- prompts -----------------------------------------------------------------------------
    def render_chat(self, messages, system_prompt: str | None = None) -> str:
        """The chat template applied to ``messages`` (a string is one user message)."""
        from ownllm.models.templates import render_chat

        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        messages = list(messages)
        if not messages:
            raise ConfigError("messages is empty: give at least one user message")
        if system_prompt and messages[0].get("role") != "system":
            messages = [{"role": "system", "content": system_prompt}] + messages
        return render_chat(self.tokenizer, messages, add_generation_prompt=True)

    def _encode(self, text: str, chat: bool):
        # A chat-rendered prompt already holds its special tokens; don't add a second BOS.
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=not chat)
        return {k: v.to(self.device) for k, v in enc.items()}

    def _prepare(self, text: str, chat: bool, kwargs: dict, user_text: str | None = None, cancel=None):
        settings = GenerationSettings.build(**kwargs)
        enc = self._encode(text, chat)
        gen = settings.hf_kwargs(enc["input_ids"].shape[1], self.context_length,
                                 self._count(user_text) if user_text is not None else None)
        if settings.seed is not None and gen["do_sample"]:
            # A generator of this request's own: torch's global one is shared by every request running beside it.
            from transformers import LogitsProcessorList

            gen["logits_processor"] = LogitsProcessorList([SeededSampler(settings.seed, gen["temperature"],
                                                                         gen["top_k"], gen["top_p"])])
            gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        # (a greedy request's seed changes nothing, and never torch's global generator: others sample with it)
        gen["pad_token_id"] = self.tokenizer.pad_token_id
        if settings.stop:
            gen.update(stop_strings=settings.stop, tokenizer=self.tokenizer)
        if cancel is not None:
            from transformers import StoppingCriteriaList

            gen["stopping_criteria"] = StoppingCriteriaList([_Cancelled(cancel)])
        return enc, gen, settings

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _complete(self, text: str, chat: bool, kwargs: dict, user_text: str | None = None) -> str:
        import torch

        enc, gen, settings = self._prepare(text, chat, kwargs, user_text)
        with torch.inference_mode():
            out = self.model.generate(**enc, **gen)
        answer = self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        # the token limit can cut a character's bytes in two (a Chinese character is often two tokens)
        return cut_at_stop(answer.rstrip("\ufffd"), settings.stop)[0]

    # -- public API --------------------------------------------------------------------------
    @property
    def is_instruct(self) -> bool:
        """True when the tokenizer carries a chat template (an instruct/chat model)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def generate(self, prompt: str, system_prompt: str | None = None, raw: bool | None = None,
                 **kwargs) -> str:
        """Answer ``prompt``. Instruct models get their chat template (``prompt`` is the user turn);
        base models, or ``raw=True``, continue it as plain text.

        Keyword arguments: max_new_tokens, max_length (prompt + new tokens), temperature,
        top_p, top_k, repetition_penalty, do_sample, seed, stop.
        """
        if raw is None:
            raw = not self.is_instruct and not system_prompt
        if not raw:
            return self.chat(prompt, system_prompt=system_prompt, **kwargs)
        return self._complete(prompt, False, kwargs)

    def chat(self, messages, system_prompt: str | None = None, **kwargs) -> str:
        """Answer the last user turn of ``messages`` (a list of {role, content}, or a string)."""
        return self._complete(self.render_chat(messages, system_prompt), True, kwargs, _user_text(messages))

    def prepare_stream(self, prompt_or_messages, system_prompt: str | None, chat: bool | None, kwargs: dict,
                       cancel=None):
        """``(encoded prompt, generate() arguments, settings)`` for :meth:`stream` and the batcher."""
        use_chat = chat if chat is not None else (
            not isinstance(prompt_or_messages, str) or bool(system_prompt) or self.is_instruct)
        text = self.render_chat(prompt_or_messages, system_prompt) if use_chat else prompt_or_messages
        user_text = _user_text(prompt_or_messages) if use_chat else None
        return self._prepare(text, use_chat, kwargs, user_text, cancel)

    def stream(self, prompt_or_messages, system_prompt: str | None = None, chat: bool | None = None,
               cancel=None, stats: dict | None = None, **kwargs) -> Iterator[str]:
        """Yield the answer piece by piece. A list of messages (or chat=True) uses the chat template.

        ``cancel``: a ``threading.Event``; setting it ends generation after the current token.
        ``stats``: a dict filled with prompt_tokens, completion_tokens and finish_reason
        ("stop": end of answer or a stop string, "length": the token limit, "cancelled").
        """
        enc, gen, settings = self.prepare_stream(prompt_or_messages, system_prompt, chat, kwargs, cancel)
        streamer = _counting_streamer_class()(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def run():
            import torch

            try:
                with torch.inference_mode():
                    self.model.generate(**enc, **gen, streamer=streamer)
            except BaseException as e:  # re-raised in the caller's thread below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        hit_stop: list = []
        yield from _hold_back_stops(streamer, settings.stop, hit_stop)
        thread.join()
        if errors:
            raise errors[0]
        if stats is not None:
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
            elif hit_stop or streamer.generated < gen["max_new_tokens"]:
                reason = "stop"
            else:
                reason = "length"
            stats.update(prompt_tokens=int(enc["input_ids"].shape[1]), completion_tokens=streamer.tokens_for(hit_stop),
                         finish_reason=reason)


@functools.cache
def _counting_streamer_class():  # built on first use: importing transformers is slow
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        """TextIteratorStreamer that also counts the generated tokens, and drops the half character
        a token limit can leave at the very end (shown as U+FFFD)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.generated, self._seen_prompt = 0, False
            self.chars, self.marks = 0, []  # (characters of text so far, tokens generated for it), per piece

        def put(self, value):
            if self._seen_prompt:
                self.generated += int(value.numel())
            self._seen_prompt = True
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False):
            text = text.rstrip("\ufffd") if stream_end else text
            self.chars += len(text)
            self.marks.append((self.chars, self.generated))
            super().on_finalized_text(text, stream_end)

        def tokens_for(self, hit_stop: list) -> int:
            """Completion tokens: all generated, or, when a stop string ended the answer (``hit_stop`` holds
            where it ended in the text), those up to the one that completed it: the decoder may have run
            a few steps past it before it noticed."""
            if not hit_stop:
                return self.generated
            return next((n for chars, n in self.marks if chars >= hit_stop[0]), self.generated)

    return CountingStreamer


class _Cancelled:
    """A stopping criterion that ends generation once ``event`` is set (client gone, timeout)."""

    def __init__(self, event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _user_text(messages) -> str:
    if isinstance(messages, str):
        return messages
    return "".join(str(m.get("content", "")) for m in messages)


def _hold_back_stops(pieces, stop: list[str] | None, hit: list | None = None, found_event=None) -> Iterator[str]:
    """Pass text through, holding back what could be the start of a stop string; end at a stop
    (append where the stop string ended in the whole text to ``hit``, and set ``found_event``, which ends a
    batched row, when one was found)."""
    if not stop:
        yield from (p for p in pieces if p)
        return
    keep = max(len(s) for s in stop) - 1
    buffer, passed = "", 0  # passed: characters already yielded before ``buffer``
    for piece in pieces:
        buffer += piece
        text, found = cut_at_stop(buffer, stop)
        if found:
            if hit is not None:
                hit.append(passed + len(text) + max(len(s) for s in stop if buffer.startswith(s, len(text))))
            if found_event is not None:
                found_event.set()
            if text:
                yield text
            for _ in pieces:  # drain so the generating thread can finish
                pass
            return
        safe = len(buffer) - keep
        if safe > 0:
            yield buffer[:safe]
            buffer, passed = buffer[safe:], passed + safe
    if buffer:
        yield buffer


def generate_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, batch: int = 8,
                    strip: bool = True, stopped: list | None = None) -> tuple[list[str], float, int]:
    """Greedy answers to rendered ``prompts``, batched with left padding. Returns answers, seconds and new tokens;
    ``stopped``, when given, gets one bool per answer: it ended on an end token within ``max_new_tokens``."""
    import time

    import torch

    tokenizer.padding_side = "left"
    answers, new_tokens, start = [], 0, time.perf_counter()
    for i in range(0, len(prompts), batch):
        enc = tokenizer(prompts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
        gen = out[:, enc["input_ids"].shape[1]:]
        ends = model.generation_config.eos_token_id
        ends = set(ends if isinstance(ends, (list, tuple)) else [ends])
        for row in gen:
            if stopped is not None:
                stopped.append(any(int(t) in ends for t in row))
            keep = row[row != tokenizer.pad_token_id]
            new_tokens += len(keep)
            text = tokenizer.decode(keep, skip_special_tokens=True)
            answers.append(text.strip() if strip else text)
    tokenizer.padding_side = "right"
    return answers, time.perf_counter() - start, new_tokens
