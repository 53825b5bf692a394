"""Concurrent requests share decode steps: continuous batching for ``serve``.

One thread owns the model. A request that arrives is prefilled on its own (its prompt in one forward
pass), then joins the running batch: its keys/values are left-padded to the batch's length (or the
batch to its) and stacked along the batch axis, with an attention mask that hides the padding. Each
step then decodes one token for every row in one forward pass; a row leaves when it ends (end token,
token limit, stop string, client gone, timeout) and the padding no remaining row needs is trimmed.
Each row keeps its own logits processors (penalty, temperature, top-k/p, its seeded sampler), so a
request gets what it would alone; only float summation order differs.

transformers' own continuous batching (``generate_batch``, paged attention) has no per-request seeds,
stop strings or repetition penalty, which every ``serve`` request may carry: hence this loop.
Models: a transformers causal LM (a tuned run's adapter merged, as ``serve`` loads it) and
``OnnxCausalLM``; an unmerged PEFT model (prefix tuning) keeps one ``generate`` per request.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator

from ownllm.models.generation import _counting_streamer_class, _hold_back_stops, logits_processors
from ownllm.models.onnx_runtime import OnnxCausalLM, positions_from_mask

_IDLE_WAIT_SECONDS = 1.0


def can_batch(own) -> bool:
    """True for models whose forward pass the batcher can drive with its own key/value cache."""
    model = own.model
    if isinstance(model, OnnxCausalLM):
        return getattr(model, "batchable", True)  # llama.cpp's context holds one sequence
    try:
        from peft import PeftModel
    except ImportError:
        PeftModel = ()
    return not isinstance(model, PeftModel) and hasattr(model, "generate") and hasattr(model, "config")


class _Row:
    """One request in the batch: its tokens, processors, limits and where its text goes."""

    def __init__(self, enc: dict, gen: dict, streamer, cancel: threading.Event, eos):
        import torch

        self.ids = enc["input_ids"].cpu()                                 # (1, prompt + generated)
        self.mask = enc.get("attention_mask", torch.ones_like(self.ids)).cpu().long()
        self.processors = logits_processors(gen)
        self.sample = bool(gen.get("do_sample"))
        self.max_new = gen["max_new_tokens"]
        self.streamer, self.cancel, self.eos = streamer, cancel, eos
        self.stop = threading.Event()      # set by the reader: a stop string was found, or it left
        self.finished = threading.Event()
        self.generated, self.error, self.ended_by_eos = 0, None, False

    def choose(self, logits):
        """Pick this row's next token from its logits (1, vocab) and hand it to the reader."""
        import torch

        scores = self.processors(self.ids, logits.float())
        if self.sample:
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1)[0]
        else:
            token = scores.argmax(dim=-1)
        self.ids = torch.cat([self.ids, token[:, None]], dim=1)
        self.generated += 1
        self.streamer.put(token)
        self.ended_by_eos = int(token) in self.eos
        return int(token)

    @property
    def done(self) -> bool:
        return (self.ended_by_eos or self.generated >= self.max_new or self.stop.is_set()
                or self.cancel.is_set())

    def end(self, error: BaseException | None = None) -> None:
        self.error = error
        self.streamer.end()
        self.finished.set()


class Batcher:
    """``stream()`` with :meth:`OwnModel.stream`'s contract, its decoding shared with concurrent requests."""

    def __init__(self, own, max_batch: int = 8):
        self.own, self.max_batch = own, max_batch
        self.inbox: queue.Queue = queue.Queue()
        self.eos = _end_ids(own)
        self.largest_batch = 0  # the most rows decoded in one step so far (tests and benchmarks read it)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def stream(self, prompt_or_messages, system_prompt: str | None = None, chat: bool | None = None,
               cancel: threading.Event | None = None, stats: dict | None = None, **kwargs) -> Iterator[str]:
        """Yield the answer piece by piece; ``stats`` gets prompt_tokens, completion_tokens, finish_reason."""
        enc, gen, settings = self.own.prepare_stream(prompt_or_messages, system_prompt, chat, kwargs)
        streamer = _counting_streamer_class()(self.own.tokenizer, skip_prompt=True, skip_special_tokens=True)
        row = _Row(enc, gen, streamer, cancel or threading.Event(), self.eos)
        streamer.put(row.ids)  # the prompt, which the streamer skips
        self.inbox.put(row)
        self._start()
        hit_stop: list = []
        try:
            yield from _hold_back_stops(streamer, settings.stop, hit_stop, row.stop)
        finally:  # the reader left early (a stop string, a client gone): the row leaves the batch
            row.stop.set()
        row.finished.wait()
        if row.error is not None:
            raise row.error
        if stats is not None:
            if row.cancel.is_set():
                reason = "cancelled"
            else:
                reason = "stop" if hit_stop or row.ended_by_eos or row.generated < row.max_new else "length"
            stats.update(prompt_tokens=int(enc["input_ids"].shape[1]),
                         completion_tokens=min(row.generated, streamer.tokens_for(hit_stop)), finish_reason=reason)

    # -- the decoding thread -------------------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True, name="ownllm-batcher")
                self._thread.start()

    def _idle_exit(self) -> bool:
        """End the decoding thread when nothing waits (the next request starts a new one); under the lock
        ``_start`` takes, so a request put in the inbox meanwhile is never left behind."""
        with self._lock:
            if self.inbox.empty():
                self._thread = None
                return True
            return False

    def _loop(self) -> None:
        import torch

        rows: list[_Row] = []
        past, mask = None, None  # per layer (keys, values) of (rows, heads, length, head dim); (rows, length)
        while True:
            arrived = self._take(len(rows))
            if not rows and not arrived and self._idle_exit():
                return
            with torch.inference_mode():
                for row in arrived:
                    try:
                        logits, row_past = self._forward(row.ids, row.mask, positions_from_mask(row.mask), None)
                        row.choose(logits)
                    except BaseException as e:  # handed to the request's thread, which raises it
                        row.end(e)
                        continue
                    past, mask = _join(past, mask, row_past, row.mask)
                    rows.append(row)
                rows, past, mask = _drop_done(rows, past, mask)
                if not rows:
                    continue
                self.largest_batch = max(self.largest_batch, len(rows))
                last = torch.cat([r.ids[:, -1:] for r in rows])          # (rows, 1)
                mask = torch.cat([mask, torch.ones_like(last)], dim=1)
                try:
                    logits, past = self._forward(last, mask, mask.sum(-1, keepdim=True) - 1, past)
                    for i, row in enumerate(rows):
                        row.choose(logits[i:i + 1])
                except BaseException as e:
                    for row in rows:
                        row.end(e)
                    rows, past, mask = [], None, None

    def _take(self, running: int) -> list[_Row]:
        """Requests waiting to join: blocks while nothing runs; never more than the batch holds."""
        arrived = []
        if not running:
            try:
                arrived.append(self.inbox.get(timeout=_IDLE_WAIT_SECONDS))
            except queue.Empty:
                return []
        while running + len(arrived) < self.max_batch:
            try:
                arrived.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return arrived

    def _forward(self, ids, mask, positions, past):
        """Last-position logits (rows, vocab) and the new keys/values, from transformers or onnxruntime."""
        model = self.own.model
        if isinstance(model, OnnxCausalLM):
            import torch

            arrays = [a.contiguous().numpy() for kv in past for a in kv] if past else model._empty_past(ids.shape[0])
            logits, present = model._run(ids, mask, positions, arrays)
            tensors = [torch.from_numpy(a) for a in present]
            return torch.from_numpy(logits[:, -1, :]), list(zip(tensors[0::2], tensors[1::2]))
        from transformers import DynamicCache

        device = self.own.device
        cache = DynamicCache(ddp_cache_data=past) if past else DynamicCache()  # updated in place by the forward
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                    use_cache=True, logits_to_keep=1, **{_cache_argument(model): cache})
        return out.logits[:, -1, :].float().cpu(), [(layer.keys, layer.values) for layer in cache.layers]


def _cache_argument(model) -> str:
    """transformers 5.24 renamed forward's ``past_key_values`` to ``cache`` (the old name warns)."""
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def _end_ids(own) -> set[int]:
    """The tokens that end an answer, as ``generate`` reads them (ONNX: its own rule)."""
    model = own.model
    if hasattr(model, "_eos_ids"):
        return model._eos_ids(own.tokenizer)
    value = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if value is None:
        value = own.tokenizer.eos_token_id
    return set(value if isinstance(value, (list, tuple)) else [] if value is None else [value])


def _left_pad(past, mask, width: int):
    """``width`` masked-out positions in front of every row's keys/values and mask."""
    import torch.nn.functional as F

    past = [(F.pad(k, (0, 0, width, 0)), F.pad(v, (0, 0, width, 0))) for k, v in past]
    return past, F.pad(mask, (width, 0))


def _join(past, mask, row_past, row_mask):
    """The batch with one more row stacked under it, the shorter side left-padded."""
    import torch

    if past is None:
        return row_past, row_mask
    length, row_length = mask.shape[1], row_mask.shape[1]
    if row_length < length:
        row_past, row_mask = _left_pad(row_past, row_mask, length - row_length)
    elif length < row_length:
        past, mask = _left_pad(past, mask, row_length - length)
    return ([(torch.cat([k, rk.to(k.device)]), torch.cat([v, rv.to(v.device)]))
             for (k, v), (rk, rv) in zip(past, row_past)], torch.cat([mask, row_mask]))


def _drop_done(rows: list[_Row], past, mask):
    """Rows still decoding, with their keys/values and mask; the front padding none of them needs trimmed."""
    import torch

    keep = [i for i, r in enumerate(rows) if not r.done]
    for r in rows:
        if r.done:
            r.end()
    if not keep:
        return [], None, None
    if len(keep) < len(rows):
        index = torch.tensor(keep)
        past = [(k.index_select(0, index.to(k.device)), v.index_select(0, index.to(v.device))) for k, v in past]
        mask = mask.index_select(0, index)
    first = int(mask.any(0).nonzero()[0])
    if first:
        past = [(k[:, :, first:].contiguous(), v[:, :, first:].contiguous()) for k, v in past]
        mask = mask[:, first:]
    return [rows[i] for i in keep], past, mask
