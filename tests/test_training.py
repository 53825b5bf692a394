import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from families import FAMILIES

from ownllm.training.config import TrainConfig
from ownllm.errors import ConfigError, DiskFullError, OwnLLMError
from ownllm.training.trainer import Trainer

FAST = {"precision": "fp32", "batch_size": 4, "logging_steps": 1, "early_stopping_patience": 0}


def make(tiny_model_dir, data, out, **kw):
    args = {**FAST, "output_dir": str(out), **kw}
    return Trainer(model=tiny_model_dir, train_dataset=data, args=args)


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# -- one battery over every method ---------------------------------------------------------
METHODS = ["lora", "dora", "full", "prefix"]
try:
    import bitsandbytes  # noqa: F401
    METHODS.append("qlora")
except ImportError:
    pass


@pytest.mark.parametrize("method", METHODS)
def test_method_contract(method, tiny_model_dir, qa_file, tmp_path):
    from ownllm.models.load import load_pretrained
    from ownllm.training import methods

    cfg = TrainConfig(method=method, lora_r=8, lora_alpha=16, prefix_tokens=4)
    qcfg = methods.quantization_config(method, torch.float32)
    base, tok, _ = load_pretrained(tiny_model_dir, device="cpu", dtype="fp32", quantization_config=qcfg)
    model = methods.apply(base, cfg)
    before = weights(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and (method == "full" or len(trainable) < len(before))
    ids = torch.tensor([tok("The code for item 3 is 1021.")["input_ids"]])
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = weights(model)
    assert all(not torch.equal(before[n], after[n]) for n in trainable if "lora_B" in n or method in ("full", "prefix"))
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trainable)
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    cfg.model = tiny_model_dir
    saved = methods.save_trained(model, tok, str(tmp_path), cfg)
    from ownllm.models.load import load_model, merge_adapter

    if method != "qlora":
        with torch.no_grad():
            again = load_model(saved if method == "full" else str(tmp_path), device="cpu").model(input_ids=ids).logits
        assert torch.allclose(ref, again, atol=1e-5)
    if method in ("lora", "dora"):
        with torch.no_grad():
            merged = merge_adapter(model, strict=True)[0](input_ids=ids).logits
        assert torch.allclose(ref, merged, atol=1e-4)


@pytest.mark.parametrize("method", ["lora", "dora", "prefix"])
def test_bf16_adapter_training_keeps_frozen_weights_in_bf16(method, tiny_model_dir, qa_file, tmp_path):
    """bf16 runs of adapter methods hold the frozen base in bf16 and the trained adapter in fp32 (the
    CPU path needs native bf16; on other CPUs bf16 is refused and this is skipped)."""
    from ownllm.device import cpu_has_fast_bf16

    if not cpu_has_fast_bf16():
        pytest.skip("this CPU has no native bf16")
    trainer = make(tiny_model_dir, qa_file, tmp_path / "run", method=method, precision="bf16", max_steps=4,
                   lr=5e-3, prefix_tokens=4)
    summary = trainer.train()
    frozen = {p.dtype for p in trainer.model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    assert summary["precision"] == "bf16" and math.isfinite(summary["final_train_loss"])
    assert os.path.exists(tmp_path / "run" / "adapter" / "adapter_config.json")


# -- the guide's snippet and the run directory ----------------------------------------------
def test_guide_snippet_end_to_end(tiny_model_dir, tmp_path):
    from datasets import Dataset

    import ownllm as deepseek

    texts = [f"Record {i}: patient reports symptom {i % 7} and receives advice {i % 5}." for i in range(60)]
    dataset = Dataset.from_dict({"text": texts}).train_test_split(test_size=0.2, seed=0)
    trainer = deepseek.Trainer(model=tiny_model_dir, train_dataset=dataset["train"],
                               args={"learning_rate": 3e-5, "per_device_train_batch_size": 8,
                                     "gradient_accumulation_steps": 1, "num_train_epochs": 2,
                                     "output_dir": str(tmp_path / "run"), "precision": "fp32", "save_steps": 2,
                                     "save_total_limit": 10})
    summary = trainer.train()
    run = tmp_path / "run"
    for f in ("config.yaml", "metrics.jsonl", "loss.png", "train_summary.json", "adapter/adapter_config.json",
              "data/train.jsonl"):
        assert (run / f).exists(), f
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    for key in ("train_tokens", "tokens_per_second", "peak_memory_mb", "wall_seconds", "final_train_loss",
                "best_val_loss", "stopped_because"):
        assert key in summary
    assert summary["epochs"] == pytest.approx(2.0)
    # every logged step says how long it took and how many tokens it computed, padding included
    # (what `ownllm plan --calibrate` fits its time model to)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "seconds_since_last_log" in r]
    assert steps and all(r["seconds_since_last_log"] > 0 for r in steps)
    assert all(r["computed_tokens_since_last_log"] >= r["tokens_per_second"] * r["seconds_since_last_log"] * 0.99
               for r in steps)
    trainer.resume_from_checkpoint("checkpoint-4")
    # read now: the resumed run saves 16 more checkpoints, and with 5 validation rows there is no best one to keep
    state = json.loads((run / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    again = trainer.train(additional_epochs=2)
    assert again["epochs"] == pytest.approx(state["epoch"] + 2, abs=1e-3)
    # an epoch is the training rows and forgetting protection's replayed rows: under 100 rows the default level
    # replays strong's 0.75 per row, 43 + 33 rows / batch 8 = 10 steps
    from ownllm.planning.estimate import steps_per_epoch

    rows = summary["train_rows"] + summary["protection"]["replay_rows"]
    assert summary["protection"]["replay_rows"] == 33 and steps_per_epoch(rows, 8) == 10
    assert again["global_step"] == state["global_step"] + 2 * 10


def test_unknown_args_are_rejected_with_suggestions(tiny_model_dir, qa_file):
    with pytest.raises(ConfigError, match="did you mean learning_rate"):
        Trainer(model=tiny_model_dir, train_dataset=qa_file, args={"learning_rat": 1e-4})
    with pytest.raises(ConfigError) as e:
        Trainer(model=tiny_model_dir, train_dataset=qa_file, args={"method": "magic", "lora_dropout": 2.0})
    assert "--method" in str(e.value) and "--lora-dropout" in str(e.value)


def test_resume_is_exact(tiny_model_dir, qa_file, tmp_path):
    straight = make(tiny_model_dir, qa_file, tmp_path / "a", max_steps=6, save_steps=3, seed=1)
    straight.train()
    losses = [r["loss"] for r in map(json.loads, open(tmp_path / "a/metrics.jsonl")) if "loss" in r]
    resumed = make(tiny_model_dir, qa_file, tmp_path / "a", max_steps=6, save_steps=3, seed=1)
    resumed.resume_from_checkpoint("checkpoint-3")
    resumed.train()
    rows = list(map(json.loads, open(tmp_path / "a/metrics.jsonl")))
    again = [r["loss"] for r in rows[len(losses) + 2:] if "loss" in r]  # the resumed run's logs
    assert again[-3:] == pytest.approx(losses[-3:], rel=1e-5)
    w1 = weights(straight.model)
    w2 = weights(resumed.model)
    assert all(torch.allclose(w1[n], w2[n], atol=1e-6) for n in w1)


def test_nan_loss_stops_with_a_message(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    from ownllm.training import hf

    real = hf.transformers.Trainer.training_step
    calls = {"n": 0}

    def poisoned(self, model, inputs, num_items_in_batch=None):
        calls["n"] += 1
        loss = real(self, model, inputs, num_items_in_batch)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(hf.transformers.Trainer, "training_step", poisoned)
    with pytest.raises(OwnLLMError, match="NaN/inf at step 4.*checkpoint-2"):
        make(tiny_model_dir, qa_file, tmp_path / "n", max_steps=6, save_steps=2).train()
    calls["n"] = 0
    summary = make(tiny_model_dir, qa_file, tmp_path / "s", max_steps=6, nan_policy="skip").train()
    assert summary["skipped_nonfinite_steps"] == 1


def test_out_of_memory_halves_the_micro_batch(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    from ownllm.training import hf

    real = hf.HFTrainer.training_step
    state = {"raised": False}

    def oom_once(self, model, inputs, num_items_in_batch=None):
        if not state["raised"] and self.state.global_step == 2:
            state["raised"] = True
            raise torch.OutOfMemoryError("simulated")
        return real(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(hf.HFTrainer, "training_step", oom_once)
    summary = make(tiny_model_dir, qa_file, tmp_path / "o", max_steps=4, save_steps=2, grad_accum=1).train()
    assert state["raised"] and summary["global_step"] == 4
    assert summary["settings"]["batch_size"] == 2 and summary["settings"]["grad_accum"] == 2
    # config.yaml keeps what was asked (it reproduces the run); the summary says what the back-off changed
    import yaml

    asked = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert asked["batch_size"] == 4 and asked["grad_accum"] == 1
    assert summary["adjusted"]["batch_size"] == 2 and summary["adjusted"]["grad_accum"] == 2
    assert any("out of memory" in why for why in summary["adjusted"]["why"])


def test_disk_full_keeps_the_previous_checkpoint(tiny_model_dir, qa_file, tmp_path, monkeypatch):
    import errno

    from ownllm.training import hf

    real = hf.transformers.Trainer._save_checkpoint

    def full_disk(self, model, trial):
        if self.state.global_step >= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, model, trial)

    monkeypatch.setattr(hf.transformers.Trainer, "_save_checkpoint", full_disk)
    with pytest.raises(DiskFullError, match="previous checkpoints are intact"):
        make(tiny_model_dir, qa_file, tmp_path / "d", max_steps=6, save_steps=2).train()
    ckpts = sorted(os.listdir(tmp_path / "d/checkpoints"))
    assert ckpts == ["checkpoint-2"]
    assert (tmp_path / "d/checkpoints/checkpoint-2/trainer_state.json").exists()


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tiny_model_dir, qa_file, tmp_path):
    out = tmp_path / "sig"
    script = textwrap.dedent(f"""
        import os, signal, threading, time
        from ownllm.training.trainer import Trainer
        from transformers import TrainerCallback
        class Kick(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == 2:
                    os.kill(os.getpid(), signal.SIGINT)
        import ownllm.training.train as loop
        real = loop.build_hf_trainer
        def build(*a, **k):
            t = real(*a, **k); t.add_callback(Kick()); return t
        loop.build_hf_trainer = build
        t = Trainer(model={tiny_model_dir!r}, train_dataset={qa_file!r},
                    args={{"output_dir": {str(out)!r}, "precision": "fp32", "max_steps": 50, "batch_size": 4}})
        s = t.train()
        print("STOPPED", s["stopped_because"], s["global_step"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "STOPPED interrupted" in proc.stdout
    assert "resume with: ownllm train --resume" in proc.stderr
    assert (out / "checkpoints" / "checkpoint-3").exists() or (out / "checkpoints" / "checkpoint-2").exists()


def test_cli_train_and_config_reproduce(tiny_model_dir, qa_file, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "ownllm", "train", "--data", qa_file, "--model", tiny_model_dir, "--out", str(out),
           "--max-steps", "2", "--precision", "fp32", "--batch-size", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = (out / "config.yaml").read_text()
    assert cfg.startswith("# Reproduce this run: ownllm train") and "max_steps: 2" in cfg
    proc = subprocess.run([sys.executable, "-m", "ownllm", "train", str(out / "config.yaml"), "max_steps=3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 3 and summary["total_params"] < 10_000_000  # the tiny model, not the default
    bad = subprocess.run([sys.executable, "-m", "ownllm", "train", "--data", qa_file, "--precision", "fp16",
                          "--model", tiny_model_dir, "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and "needs a GPU" in bad.stderr and "Traceback" not in bad.stderr


def test_add_terms_adds_tokens_and_trains_them(tiny_model_dir, tmp_path):
    from ownllm.models.load import load_model

    rows = [{"messages": [{"role": "user", "content": f"What treats condition {i}?"},
                          {"role": "assistant", "content": f"Hydroxychloroquine dose {i} with pantoprazole."}]}
            for i in range(30)]
    terms = tmp_path / "terms.txt"
    terms.write_text("hydroxychloroquine\nHydroxychloroquine\npantoprazole\nthe\n", encoding="utf-8")
    t = make(tiny_model_dir, rows, tmp_path / "t", max_steps=3, add_terms=str(terms))
    summary = t.train()
    stats = summary["added_terms"]
    assert stats["terms"] == 4 and stats["new_tokens"] == 3  # "the" is already one token
    assert stats["train_tokens_after"] < stats["train_tokens_before"]
    model = load_model(str(tmp_path / "t"))
    assert len(model.tokenizer) == model.model.get_input_embeddings().weight.shape[0]
    new_id = model.tokenizer.convert_tokens_to_ids("pantoprazole")
    assert new_id != model.tokenizer.unk_token_id
    from safetensors.torch import load_file

    base_rows = load_file(f"{tiny_model_dir}/model.safetensors")["model.embed_tokens.weight"]
    trained = model.model.get_input_embeddings()(torch.tensor([new_id]))[0]
    assert not torch.allclose(trained, base_rows.mean(0), atol=1e-4)  # moved from its mean initialisation
    assert isinstance(model.generate("What treats condition 3?", max_new_tokens=4, temperature=0), str)


def test_cli_resume_with_additional_epochs_and_init_adapter(tiny_model_dir, qa_file, tmp_path):
    run = tmp_path / "r"
    base = [sys.executable, "-m", "ownllm", "train"]
    first = subprocess.run(base + ["--data", qa_file, "--model", tiny_model_dir, "--out", str(run), "--epochs", "1",
                                   "--precision", "fp32", "--batch-size", "8", "--grad-accum", "1"],
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    one = json.loads((run / "train_summary.json").read_text())
    more = subprocess.run(base + ["--resume", str(run), "--additional-epochs", "1"], capture_output=True, text=True,
                          timeout=300)
    assert more.returncode == 0, more.stderr[-2000:]
    two = json.loads((run / "train_summary.json").read_text())
    assert two["global_step"] == 2 * one["global_step"]
    # incremental learning: a new run on new data starts from the earlier adapter
    t = make(tiny_model_dir, qa_file, tmp_path / "inc", max_steps=1, init_adapter=str(run))
    from ownllm.models.load import load_model

    earlier = load_model(str(run), device="cpu", merge=False).model  # the adapter's own weights
    t.config.max_steps = 1
    t.train()
    names = [n for n, _ in earlier.named_parameters() if "lora_A" in n]
    assert names
    start = dict(earlier.named_parameters())
    now = dict(t.model.named_parameters())
    # the new run's LoRA weights began from the earlier adapter (same shapes, close after 1 step)
    assert all(now[n].shape == start[n].shape for n in names)
    assert torch.allclose(now[names[0]], start[names[0]], atol=5e-2)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("chunked", [False, True])
def test_trained_positions_loss_equals_the_models_own_loss_and_gradients(family_dirs, family, monkeypatch, chunked):
    """The loss computed only at labelled positions (and, chunked, recomputed in backward) has the
    same value and the same LoRA gradients as transformers' loss over full logits, on every family."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ownllm.training import hf

    if chunked:
        monkeypatch.setattr(hf, "CE_UNCHUNKED_LIMIT", 0)
        monkeypatch.setattr(hf, "CE_CHUNK_ROWS", 3)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(family_dirs[family]),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    assert hf.supports_trained_positions_loss(model)
    ids = torch.randint(3, 1000, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.clone()
    labels[:, :5] = -100           # prompt tokens
    labels[mask == 0] = -100       # padding
    loss_fn = hf.trained_positions_loss(model)
    for num_items in (None, torch.tensor(40)):
        model.zero_grad()
        with loss_fn.capturing():
            out = model(input_ids=ids, attention_mask=mask, logits_to_keep=hf.no_logits(ids))
            assert out.logits.shape[1] == 0  # the model made no logits of its own
            ours = loss_fn(out, labels, num_items)
        ours.backward()
        ours_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad()
        reference = model(input_ids=ids, attention_mask=mask, labels=labels,
                          **({"num_items_in_batch": num_items} if num_items is not None else {})).loss
        reference.backward()
        assert abs(float(ours) - float(reference)) < 1e-5
        for a, p in zip(ours_grads, [p for p in model.parameters() if p.requires_grad]):
            # fp32 sums in another order: the error scales with the gradient (the family models' weights are large)
            assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max()) + 1e-7)


def test_cpu_lora_dropout_keeps_dropout_statistics(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from ownllm.training.config import TrainConfig
    from ownllm.training.methods import apply

    model = apply(AutoModelForCausalLM.from_pretrained(tiny_model_dir), TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.1))
    drops = [m for m in model.modules() if type(m).__name__ == "FastDropout"]
    assert len(drops) == 2 * 7  # every adapted linear layer of both blocks
    d = drops[0].train()
    torch.manual_seed(0)
    for shape in ((1000, 1000), (3, 333, 7)):  # odd sizes: the 64-bit draws are cut to the tensor
        y = d(torch.ones(shape))
        assert y.shape == shape
        assert abs(float((y > 0).float().mean()) - 0.9) < 0.004 and abs(float(y.mean()) - 1.0) < 0.005
        values = sorted(y.unique().tolist())
        assert values[0] == 0.0 and values[1] == pytest.approx(1 / 0.9, rel=1e-4) and len(values) == 2
    # independent masks: neighbouring 16-bit lanes of one draw are not correlated
    m = (d(torch.ones(400_000)) > 0).float().view(-1, 4)
    assert abs(float((m[:, 0] * m[:, 1]).mean()) - 0.81) < 0.004
    # bf16 input stays bf16, the gradient flows through the kept positions with the same scale
    x = torch.ones(64, 64, dtype=torch.bfloat16, requires_grad=True)
    y = d(x)
    y.sum().backward()
    assert y.dtype == torch.bfloat16 and torch.equal(x.grad, y.detach())
    x = torch.randn(4, 8)
    assert torch.equal(d.eval()(x), x)


def test_short_rows_on_cpu_train_with_eager_attention_and_the_same_loss(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ownllm.training.train import EAGER_ATTENTION_MAX_TOKENS, choose_attention

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa"),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    ids = torch.randint(3, 1000, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # a padded row
    labels = ids.masked_fill(mask == 0, -100)
    before = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert choose_attention(model, "cuda", [12]) == "sdpa"
    assert choose_attention(model, "cpu", [EAGER_ATTENTION_MAX_TOKENS + 1]) == "sdpa"
    assert choose_attention(model, "cpu", [12, 7]) == "eager"
    assert model.get_base_model().config._attn_implementation == "eager"
    after = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert abs(float(before) - float(after)) < 1e-5


def test_length_grouping_only_where_random_batches_waste_padding():
    from ownllm.planning.estimate import sampling_strategy

    assert sampling_strategy([50, 55, 60, 52, 58, 61, 49, 57] * 10, 8) == "random"
    assert sampling_strategy([20, 400, 35, 250, 60, 900, 15, 120] * 10, 8) == "group_by_length"
    assert sampling_strategy([10, 20], 8) == "random"


# LoRA on every family runs in tests/test_families.py; here the other methods' contract on each of them.
FAMILY_METHODS = [(f, m) for f in FAMILIES if f != "llama" for m in METHODS if m in ("dora", "full", "qlora")]


@pytest.mark.parametrize("family,method", FAMILY_METHODS)
def test_method_contract_on_each_family(family, method, family_dirs, qa_file, tmp_path):
    test_method_contract(method, family_dirs[family], qa_file, tmp_path)
