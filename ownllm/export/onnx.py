"""The guide's ``ONNXExporter``, and ``OnnxCausalLM``: generation from the export with onnxruntime.

The graph takes ``input_ids``, ``attention_mask``, ``position_ids`` and the past keys/values of
every layer, and returns the logits and the new keys/values (batch, sequence and past length are
dynamic), so generation feeds one new token per step. The model's config and tokenizer files are
stored in the ONNX file's metadata: ``model.onnx`` alone is enough to generate.
"""
from __future__ import annotations

import json
import os
import tempfile
from types import SimpleNamespace

from ownllm.errors import ConfigError, OwnLLMError, require

LOGIT_TOLERANCE = 1e-3
EXTERNAL_DATA_BYTES = 1_800_000_000  # one ONNX protobuf cannot exceed 2 GB: larger weights go to model.onnx.data


def _kv_layout(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) of a decoder config."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv, head_dim


def _io_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids"] + past, ["logits"] + present


def _with_cache(model):
    """The model as a function of flat tensors (ONNX inputs and outputs must be named tensors)."""
    import inspect

    import torch
    from transformers import DynamicCache

    layers = model.config.num_hidden_layers
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    class WithCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, past):
            cache = DynamicCache(config=self.model.config)
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=True, **{cache_arg: cache})
            new = out.past_key_values
            flat = []
            for i in range(layers):
                flat += [new.layers[i].keys, new.layers[i].values]
            return (out.logits, *flat)

    return WithCache()


class ONNXExporter:
    """``ONNXExporter(model).export("model.onnx")``, as in the guide.

    ``model``: a model from ``ownllm.load_model`` (a trained adapter is merged into a copy), a run
    directory, or any model name ``load_model`` accepts. ``export`` checks the file with
    onnxruntime against torch (largest logit difference, identical greedy text), writes a
    manifest beside it and returns that manifest.
    """

    def __init__(self, model, opset: int = 18, *, source: str | None = None):
        from ownllm.export.common import source_of

        require("onnx", "ONNX export", extra="onnx")
        require("onnxscript", "ONNX export", extra="onnx")
        require("onnxruntime", "ONNX export", extra="onnx")
        self.own, self.name = source_of(model)
        self.name = source or self.name  # the run directory or name the manifest records, when the caller knows it
        self.opset = opset

    def export(self, path: str = "model.onnx", overwrite: bool = False, manifest_name: str | None = None) -> dict:
        from ownllm.export.common import compare, probe_prompts, run_dir_of
        from ownllm.export.manifest import check, write_manifest
        from ownllm.utils import atomic_dir

        path = os.fspath(path)
        if not path.endswith(".onnx"):
            raise ConfigError(f"the ONNX file name must end in .onnx (got {path})")
        if os.path.exists(path) and not overwrite:
            raise ConfigError(f"{path} already exists", hint="pass overwrite=True (--overwrite), or another path")
        folder, fname = os.path.split(os.path.abspath(path))
        manifest_name = manifest_name or fname + ".manifest.json"
        run_dir = run_dir_of(self.name)
        prompts = probe_prompts(run_dir, self.own.tokenizer)
        with atomic_dir(os.path.join(folder, f".{fname}.parts")) as tmp:
            self._write(os.path.join(tmp, fname))
            onnx_model = OnnxCausalLM.load(os.path.join(tmp, fname))
            diff, same = compare(self.own.model, onnx_model, self.own.tokenizer, prompts)
            checks = [check("max |logit difference| onnxruntime vs torch", round(diff, 6), LOGIT_TOLERANCE),
                      check("greedy 16-token continuations identical", float(same), 1.0, passed=same)]
            manifest = write_manifest(tmp, "onnx", run_dir or self.name, checks,
                                      {"opset": self.opset, "probe_prompts": len(prompts),
                                       "inputs": onnx_model.input_names, "outputs": ["logits", "present.*"]})
            if not manifest["all_checks_passed"]:
                raise OwnLLMError(f"the ONNX export failed its checks: {checks}", hint=f"nothing was written at {path}")
            for name in os.listdir(tmp):  # model.onnx (+ model.onnx.data) and the manifest, each renamed into place
                os.replace(os.path.join(tmp, name),
                           os.path.join(folder, manifest_name if name == "manifest.json" else name))
        manifest["path"] = path
        return manifest

    def _write(self, path: str) -> None:
        import warnings

        import torch

        from ownllm.export.common import plain_copy

        model = plain_copy(self.own)
        model.set_attn_implementation("eager")  # plain matmul attention: every ONNX runtime has the ops
        layers, kv, head_dim = _kv_layout(model.config)
        names, outputs = _io_names(layers)
        batch, seq, past_len, total = (torch.export.Dim(n) for n in ("batch", "sequence", "past", "total"))
        ids = torch.randint(0, model.config.vocab_size, (2, 3))
        past = tuple(torch.zeros(2, kv, 4, head_dim) for _ in range(2 * layers))
        args = (ids, torch.ones(2, 7, dtype=torch.long), torch.arange(4, 7).expand(2, 3), past)
        shapes = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
                  tuple({0: batch, 2: past_len} for _ in past))
        size = sum(p.numel() * 4 for p in model.parameters())
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(_with_cache(model), args, dynamo=True, verbose=False, input_names=names,
                                        output_names=outputs, dynamic_shapes=shapes, opset_version=self.opset)
        program.model.metadata_props.update(_metadata(model, self.own.tokenizer))
        program.save(path, external_data=size > EXTERNAL_DATA_BYTES)


def _metadata(model, tokenizer) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {}
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), encoding="utf-8") as f:
                files[name] = f.read()
    gen = model.generation_config.to_dict() if getattr(model, "generation_config", None) else {}
    return {"ownllm.config": model.config.to_json_string(), "ownllm.tokenizer": json.dumps(files),
            "ownllm.generation_config": json.dumps(gen, default=str)}


class OnnxCausalLM:
    """An exported ``model.onnx`` run by onnxruntime, with the parts of a transformers causal LM
    that ownllm uses: ``model(input_ids, attention_mask).logits``, ``generate(...)`` (greedy or
    sampled, streamer, stop strings), ``config``, ``device``."""

    def __init__(self, session, config, generation_config: dict, path: str):
        import torch

        self.session, self.config, self.path = session, config, path
        self.generation_config = SimpleNamespace(**generation_config)
        self.layers, self.kv_heads, self.head_dim = _kv_layout(config)
        self.input_names, self.output_names = _io_names(self.layers)
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
        logits, _ = self._run(input_ids, mask, _positions(mask), self._empty_past(input_ids.shape[0]))
        return SimpleNamespace(logits=torch.from_numpy(logits))

    def _eos_ids(self, tokenizer) -> set[int]:
        ids = set()
        for value in (getattr(self.generation_config, "eos_token_id", None), self.config.eos_token_id,
                      getattr(tokenizer, "eos_token_id", None)):
            ids.update(value if isinstance(value, (list, tuple)) else [] if value is None else [value])
        return ids

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 256, do_sample: bool = False,
                 temperature=None, top_p=None, top_k=None, repetition_penalty: float = 1.0, pad_token_id=None,
                 streamer=None, stop_strings=None, tokenizer=None, stopping_criteria=None):
        """Greedy or sampled decoding with the KV cache, using transformers' logits processors."""
        import torch
        from transformers.generation import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                             StopStringCriteria, TemperatureLogitsWarper, TopKLogitsWarper,
                                             TopPLogitsWarper)

        processors = LogitsProcessorList()
        if repetition_penalty and repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
        if do_sample:
            if temperature and temperature != 1.0:
                processors.append(TemperatureLogitsWarper(temperature))
            if top_k:
                processors.append(TopKLogitsWarper(top_k))
            if top_p is not None and top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p))
        stop = StopStringCriteria(tokenizer, stop_strings) if stop_strings else None
        eos = torch.tensor(sorted(self._eos_ids(tokenizer)), dtype=torch.long)
        pad = pad_token_id if pad_token_id is not None else (int(eos[0]) if len(eos) else 0)

        ids = input_ids.cpu().long()
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.cpu().long()
        step_ids, positions, past = ids, _positions(mask), self._empty_past(ids.shape[0])
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


def _positions(mask):
    """Position ids that skip left padding (what transformers computes from the attention mask)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def load_onnx(path: str):
    """An ``OwnModel`` whose generation runs the ONNX file with onnxruntime."""
    from ownllm.models.generation import OwnModel

    if os.path.isdir(path):
        path = os.path.join(path, "model.onnx")
    model, tokenizer = OnnxCausalLM.load_with_tokenizer(path)
    return OwnModel(model, tokenizer, name=path)
