"""Continuous batching (ownllm.models.batching): requests that run at once share decode steps, and each
gets what it would get alone — greedy text, seeded samples, stop strings, token limits, cancellation —
on transformers and on onnxruntime."""
from __future__ import annotations

import threading
import time

import pytest

PROMPTS = ["hi", "Tell me about the weather in Paris today, please.", "你好，请介绍一下自己。",
           "What is two plus two?", "List three colours."]


def _together(batcher, requests):
    """Run ``(prompt, kwargs)`` requests in threads at once; their texts and stats, in order."""
    out = [None] * len(requests)

    def one(i, prompt, kwargs):
        stats = {}
        text = "".join(batcher.stream(prompt, chat=True, stats=stats, **kwargs))
        out[i] = (text, stats)

    threads = [threading.Thread(target=one, args=(i, p, kw)) for i, (p, kw) in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def test_concurrent_requests_share_steps_and_get_what_they_would_alone(engine_model, slowed):
    from ownllm.models.batching import Batcher, can_batch

    model = engine_model
    if not can_batch(model):
        pytest.skip("llama.cpp's context holds one sequence: serve runs its requests one at a time")
    requests = [(p, dict(temperature=0, max_new_tokens=6 + 3 * i)) for i, p in enumerate(PROMPTS)]
    requests.append((PROMPTS[0], dict(temperature=1.0, seed=7, max_new_tokens=10)))  # seeded sampling
    alone = [(model.chat(p, **kw)) for p, kw in requests]
    batcher = Batcher(model, max_batch=8)
    with slowed(model, 0.02):  # every forward pass a little slower, so the requests overlap
        together = _together(batcher, requests)
    assert batcher.largest_batch >= 3  # they did share steps
    assert [text for text, _ in together] == alone
    for (text, stats), (_, kw) in zip(together, requests):
        assert stats["completion_tokens"] <= kw["max_new_tokens"] and stats["prompt_tokens"] > 3
        assert stats["finish_reason"] == ("length" if stats["completion_tokens"] == kw["max_new_tokens"] else "stop")


def test_a_stop_string_or_a_cancel_ends_one_row_and_the_others_go_on(tiny, slowed):
    from ownllm.models.batching import Batcher

    full = tiny.chat(PROMPTS[1], temperature=0, max_new_tokens=12)
    stop = full[len(full) // 2: len(full) // 2 + 2].strip() or full[-1]
    cancel = threading.Event()
    batcher = Batcher(tiny, max_batch=4)
    results = {}

    def cancelled():
        stats = {}
        for n, _ in enumerate(batcher.stream(PROMPTS[2], chat=True, cancel=cancel, stats=stats, temperature=0,
                                             max_new_tokens=200)):
            if n == 2:
                cancel.set()
        results["cancelled"] = stats

    with slowed(tiny, 0.02):
        t = threading.Thread(target=cancelled)
        t.start()
        stats = {}
        results["stopped"] = "".join(batcher.stream(PROMPTS[1], chat=True, stats=stats, temperature=0,
                                                    max_new_tokens=12, stop=[stop])), stats
        results["plain"] = "".join(batcher.stream(PROMPTS[3], chat=True, temperature=0, max_new_tokens=5))
        t.join(timeout=60)
    text, stats = results["stopped"]
    assert text == full[:full.index(stop)] and stats["finish_reason"] == "stop"
    assert results["cancelled"]["finish_reason"] == "cancelled" and results["cancelled"]["completion_tokens"] < 200
    assert results["plain"] == tiny.chat(PROMPTS[3], temperature=0, max_new_tokens=5)


def test_a_failing_forward_pass_fails_its_requests_not_the_batcher(tiny):
    from ownllm.models.batching import Batcher

    batcher = Batcher(tiny, max_batch=2)
    inner, original = tiny.model, tiny.model.forward

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    inner.forward = broken
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            list(batcher.stream("hi", chat=True, temperature=0, max_new_tokens=3))
    finally:
        inner.forward = original
    expected = tiny.chat("hi", temperature=0, max_new_tokens=3)
    assert "".join(batcher.stream("hi", chat=True, temperature=0, max_new_tokens=3)) == expected
    deadline = time.time() + 15
    while batcher._thread is not None and time.time() < deadline:
        time.sleep(0.1)
    assert batcher._thread is None  # idle: the decoding thread ended
    assert "".join(batcher.stream("hi", chat=True, temperature=0, max_new_tokens=3)) == expected  # and restarts


def test_prefix_tuning_keeps_one_generate_per_request(tiny_model_dir):
    from peft import PrefixTuningConfig, get_peft_model

    from ownllm.models.batching import can_batch
    from ownllm.models.generation import OwnModel
    from ownllm.models.load import load_model

    own = load_model(tiny_model_dir, device="cpu")
    assert can_batch(own)
    prefix = get_peft_model(own.model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert not can_batch(OwnModel(prefix, own.tokenizer))


def test_completion_tokens_stop_at_the_token_that_completes_a_stop_string(tiny, slowed):
    """The usage a client is billed by counts the tokens up to the one that completed the stop string,
    not the steps the decoder ran before it noticed (batched), nor any after it (alone)."""
    from ownllm.models.batching import Batcher

    kw = dict(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=11)  # varied text, same draws
    full = tiny.chat(PROMPTS[1], max_new_tokens=16, **kw)
    stop = full.strip()[len(full.strip()) // 2:][:3]
    assert stop.strip() and stop in full
    # the fewest tokens whose text holds the stop string (seeded draws: every prefix is the same)
    expected = next(n for n in range(1, 17) if stop in tiny.chat(PROMPTS[1], max_new_tokens=n, **kw))
    stats = {}
    text = "".join(tiny.stream(PROMPTS[1], chat=True, stats=stats, max_new_tokens=16, stop=[stop], **kw))
    assert text == full[:full.index(stop)] and stats["completion_tokens"] == expected < 16
    batcher = Batcher(tiny, max_batch=2)
    with slowed(tiny, 0.05):  # the decoder runs on while the reader looks for the stop string
        stats = {}
        text = "".join(batcher.stream(PROMPTS[1], chat=True, stats=stats, max_new_tokens=16, stop=[stop], **kw))
    assert text == full[:full.index(stop)] and stats["completion_tokens"] == expected


def test_a_seeded_greedy_request_leaves_the_shared_random_generator_alone(tiny):
    import torch

    torch.manual_seed(123)
    state = torch.get_rng_state()
    tiny.chat("hi", temperature=0, seed=5, max_new_tokens=3)
    assert torch.equal(torch.get_rng_state(), state)
