"""The guide's ``ONNXExporter``: writes ``model.onnx`` and proves it against torch.

The graph takes ``input_ids``, ``attention_mask``, ``position_ids`` and the past keys/values of
every layer, and returns the logits and the new keys/values (batch, sequence and past length are
dynamic), so generation feeds one new token per step. The model's config and tokenizer files are
stored in the ONNX file's metadata: ``model.onnx`` alone is enough to generate, with
``ownllm.models.onnx_runtime.OnnxCausalLM``.
"""
from __future__ import annotations

import json
import os
import tempfile

from ownllm.errors import ConfigError, require
from ownllm.models.architecture import kv_layout
from ownllm.models.onnx_runtime import OnnxCausalLM, io_names

EXTERNAL_DATA_BYTES = 1_800_000_000  # one ONNX protobuf cannot exceed 2 GB: larger weights go to model.onnx.data


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
        from ownllm.export.common import agreement, float_export_checks, probe_prompts
        from ownllm.export.manifest import raise_if_failed, write_manifest
        from ownllm.rundir import run_dir_of
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
            checks = float_export_checks(agreement(self.own.model, onnx_model, self.own.tokenizer, prompts),
                                         "onnxruntime vs torch")
            manifest = write_manifest(tmp, "onnx", run_dir.path if run_dir else self.name, checks,
                                      {"opset": self.opset, "probe_prompts": len(prompts),
                                       "inputs": onnx_model.input_names, "outputs": ["logits", "present.*"]})
            raise_if_failed(manifest, "ONNX", path)
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
        layers, kv, head_dim = kv_layout(model.config)
        names, outputs = io_names(layers)
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
