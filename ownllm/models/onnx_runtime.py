"""``OnnxCausalLM``: generation from an ONNX export (``ownllm export --format onnx``) with onnxruntime.

The graph takes ``input_ids``, ``attention_mask``, ``position_ids`` and the past keys/values of
every layer, and returns the logits and the new keys/values, so generation feeds one new token per
step. The model's config and tokenizer are read from the file's metadata: ``model.onnx`` alone is
enough. Writing and verifying the file is ``ownllm.export.onnx``'s job.
"""
from __future__ import annotations

import json
import os
import tempfile
from types import SimpleNamespace

from ownllm.errors import ConfigError, require
from ownllm.models.architecture import kv_layout


def io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids"] + past, ["logits"] + present


class OnnxCausalLM:
    """An exported ``model.onnx`` run by onnxruntime, with the parts of a transformers causal LM
    that ownllm uses: ``model(input_ids, attention_mask).logits``, ``generate(...)`` (greedy or
    sampled, streamer, stop strings), ``config``, ``device``."""

    def __init__(self, session, config, generation_config: dict, path: str):
        import torch

        self.session, self.config, self.path = session, config, path
        self.generation_config = SimpleNamespace(**generation_config)
        self.layers, self.kv_heads, self.head_dim = kv_layout(config)
        self.input_names, self.output_names = io_names(self.layers)
        self.device = torch.device("cpu")

    @classmethod
    def load(cls, path: str) -> "OnnxCausalLM":
        return cls.load_with_tokenizer(path)[0]

    @classmethod
    def load_with_tokenizer(cls, path: str):
        """``(OnnxCausalLM, tokenizer)`` from a file written by ``ONNXExporter``."""
        require("onnxruntime", "running an ONNX model", extra="onnx")
        import onnxruntime as ort
        from transformers import AutoConfig, AutoTokenizer

        if not os.path.isfile(path):
            raise ConfigError(f"ONNX file not found: {path}")
        try:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise ConfigError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0]}") from e
        meta = session.get_modelmeta().custom_metadata_map
        if "ownllm.config" not in meta:
            raise ConfigError(f"{path} was not written by ownllm (no config and tokenizer inside)",
                              hint="export it with `ownllm export RUN --format onnx`")
        cfg = json.loads(meta["ownllm.config"])
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in json.loads(meta["ownllm.tokenizer"]).items():
                with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                    f.write(text)
            tokenizer = AutoTokenizer.from_pretrained(tmp)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(session, config, json.loads(meta.get("ownllm.generation_config", "{}")), path), tokenizer

    def parameters(self):
        return iter(())

    def eval(self):
        return self

    def _empty_past(self, batch: int) -> list:
        import numpy as np

        return [np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=np.float32) for _ in range(2 * self.layers)]

    def _run(self, input_ids, attention_mask, position_ids, past):
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy(),
                "position_ids": position_ids.numpy()}
        feed.update(zip(self.input_names[3:], past))
        outputs = self.session.run(None, feed)
        return outputs[0], outputs[1:]

    def __call__(self, input_ids, attention_mask=None, **_):
        import torch

        input_ids = input_ids.cpu().long()
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.cpu().long()
        logits, _ = self._run(input_ids, mask, positions_from_mask(mask), self._empty_past(input_ids.shape[0]))
        return SimpleNamespace(logits=torch.from_numpy(logits))

    def _eos_ids(self, tokenizer) -> set[int]:
        ids = set()
        for value in (getattr(self.generation_config, "eos_token_id", None), self.config.eos_token_id,
                      getattr(tokenizer, "eos_token_id", None)):
            ids.update(value if isinstance(value, (list, tuple)) else [] if value is None else [value])
        return ids

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 256, do_sample: bool = False,
                 temperature=None, top_p=None, top_k=None, repetition_penalty: float = 1.0, pad_token_id=None,
                 streamer=None, stop_strings=None, tokenizer=None, stopping_criteria=None, logits_processor=None,
                 eos_token_id=None):
        """Greedy or sampled decoding with the KV cache, using transformers' logits processors. ``eos_token_id``
        (an id or a list), as in transformers: the tokens that end a row instead of the model's own."""
        import torch
        from transformers.generation import StopStringCriteria

        from ownllm.models.generation import logits_processors

        processors = logits_processors(dict(repetition_penalty=repetition_penalty, do_sample=do_sample,
                                            temperature=temperature, top_k=top_k, top_p=top_p,
                                            logits_processor=logits_processor))
        stop = StopStringCriteria(tokenizer, stop_strings) if stop_strings else None
        ends = self._eos_ids(tokenizer) if eos_token_id is None else set(
            eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])
        eos = torch.tensor(sorted(ends), dtype=torch.long)
        pad = pad_token_id if pad_token_id is not None else (int(eos[0]) if len(eos) else 0)

        ids = input_ids.cpu().long()
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.cpu().long()
        step_ids, positions, past = ids, positions_from_mask(mask), self._empty_past(ids.shape[0])
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        if streamer is not None:
            streamer.put(ids)
        for _ in range(max_new_tokens):
            logits, past = self._run(step_ids, mask, positions, past)
            scores = processors(ids, torch.from_numpy(logits[:, -1, :]).float())
            if do_sample:
                token = torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)
            else:
                token = scores.argmax(dim=-1)
            token = torch.where(done, torch.full_like(token, pad), token)
            ids = torch.cat([ids, token[:, None]], dim=1)
            if streamer is not None:
                streamer.put(token)
            done |= torch.isin(token, eos)
            for criterion in ([stop] if stop is not None else []) + list(stopping_criteria or []):
                done |= criterion(ids, scores)
            if bool(done.all()):
                break
            step_ids = token[:, None]
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
        if streamer is not None:
            streamer.end()
        return ids


def positions_from_mask(mask):
    """Position ids that skip left padding (what transformers computes from the attention mask)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def load_onnx(path: str):
    """An ``OwnModel`` whose generation runs the ONNX file with onnxruntime."""
    from ownllm.models.generation import OwnModel

    if os.path.isdir(path):
        path = os.path.join(path, "model.onnx")
    model, tokenizer = OnnxCausalLM.load_with_tokenizer(path)
    return OwnModel(model, tokenizer, name=path)
