"""``LlamaCppCausalLM``: generation from a GGUF export with llama.cpp (``pip install llama-cpp-python``).

It takes ``OnnxCausalLM``'s decoding loop (logits processors, seeds, stop strings, streamer, end tokens)
and swaps the runtime: llama.cpp keeps the keys/values in its own context, so a step feeds only the new
tokens. One sequence at a time (a lock serialises requests); ``serve`` does not batch it.
"""
from __future__ import annotations

import threading

from ownllm.errors import ConfigError, require
from ownllm.models.onnx_runtime import OnnxCausalLM

# llama.cpp keeps every position's logits here (the start-up check compares them): context x vocabulary
# floats, ≈ 20 GB for a 1.5B Qwen at its full 32k context; so the context is capped.
LLAMACPP_CONTEXT = 4096


class LlamaCppCausalLM(OnnxCausalLM):
    batchable = False

    def __init__(self, llm, config, generation_config, path: str):  # noqa: D107 — no ONNX session to set up
        import torch

        self.llm, self.config, self.path = llm, config, path
        self.generation_config = generation_config
        self.device = torch.device("cpu")
        self.lock = threading.Lock()

    def _empty_past(self, batch: int):
        if batch != 1:
            raise ConfigError("llama.cpp generates one sequence at a time", hint="use --engine torch or onnx to batch")
        return None

    def _run(self, input_ids, attention_mask, position_ids, past):
        """Logits (1, new tokens, vocabulary) for ``input_ids`` after the context so far (``past``: its length)."""
        import numpy as np

        if past is None:
            self.llm.reset()
        start = self.llm.n_tokens
        self.llm.eval(input_ids[0].tolist())
        return np.asarray(self.llm.scores[start:self.llm.n_tokens], dtype=np.float32)[None], self.llm.n_tokens

    def __call__(self, *args, **kwargs):
        with self.lock:
            return super().__call__(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self.lock:
            return super().generate(*args, **kwargs)


def load_llamacpp(path: str, reference):
    """An ``OwnModel`` generating from the GGUF file at ``path`` with llama.cpp; ``reference`` (the OwnModel
    it was exported from) lends its tokenizer, config and answer-ending tokens, so prompts and stops are
    the same as with torch."""
    import copy

    import torch

    from ownllm.models.generation import OwnModel

    llama_cpp = require("llama_cpp", "--engine llamacpp", package="llama-cpp-python", extra="llamacpp")
    # the cap is told to requests through the config (prompt + max_tokens beyond it are refused with a message)
    config = copy.deepcopy(reference.model.config)
    config.max_position_embeddings = min(getattr(config, "max_position_embeddings", 0) or 2048, LLAMACPP_CONTEXT)
    llm = llama_cpp.Llama(path, n_ctx=config.max_position_embeddings, logits_all=True,
                          verbose=False, n_threads=max(1, torch.get_num_threads()))
    model = LlamaCppCausalLM(llm, config, reference.model.generation_config, path)
    return OwnModel(model, reference.tokenizer, name=path)
