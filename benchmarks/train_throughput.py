"""Training speed and memory: ownllm vs a plain `transformers.Trainer` + `peft` script, same job.

    python benchmarks/train_throughput.py [--steps 30] [--rounds 3] [--precision fp32] [--hf-weights bf16]
                                          [--protect both|off|default]

Both sides get the same model (the embedded SmolLM2-135M), the same tokenized rows (the bundled
support sample, rendered with assistant-only labels), the same LoRA configuration, micro-batch,
accumulation, sequence limit, learning rate, seed and number of optimizer steps. Each run is its
own process (peak RSS is per process); runs alternate. Printed: useful (non-padding) tokens/s and
trained (labelled) tokens/s, peak RSS, and the validation loss after training, computed by the same
function for both, then the ratios.

The baseline is what a Hugging Face user writes: `DataCollatorForSeq2Seq` padding, random batches,
the model's own loss over every position; its weights are loaded in fp32 (the Trainer's `bf16=True`
autocasts them), or in bf16 with `--hf-weights bf16`, as many LoRA recipes do.

Forgetting protection is on by default in ownllm: its runs then also train replayed general rows with
a KL term against the base model (computed once, before training), which the baseline does not. So
ownllm is measured both ways (``--protect both``): protection off (the same job as the baseline) and
protection at its default (what a person gets), each against the same plain HF run of that round.
The ``wall`` figures include everything ``train()`` does (protection's replay answers and base
distributions; the replay answers are cached after the first run of a machine). Printed: per round,
then the median and range over rounds of each ratio, never the best round.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
DATA = os.path.join(HERE, "..", "examples", "data", "support_en.jsonl")


def _prepared(tmp: str):
    """The sample rows, prepared once by ownllm's data pipeline; both sides train on these tokens."""
    from ownllm.data.prepare import load_prepared, prepare_dataset

    run = os.path.join(tmp, "data-run")
    if not os.path.exists(os.path.join(run, "data", "train.jsonl")):
        prepare_dataset([DATA], out=run, model="smollm2-135m", max_seq_len=512, seed=42)
    return run, load_prepared(run)


def _tokenized(rows, tokenizer):
    from types import SimpleNamespace

    from ownllm.training.data import tokenize

    return tokenize(rows, tokenizer, SimpleNamespace(template=None, max_seq_len=512, train_on_prompt=False))[0]


def _val_loss(model, tokenizer, val_rows) -> float:
    """Mean loss per labelled token over the validation rows, one row at a time (same for both sides)."""
    import torch

    ds = _tokenized(val_rows, tokenizer)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ids, labels in zip(ds["input_ids"], ds["labels"]):
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
            n = sum(1 for x in labels[1:] if x != -100)
            total += float(out.loss) * n
            count += n
    return total / count


def worker(side: str, args) -> dict:
    import torch

    from ownllm.models.load import load_tokenizer

    tmp = args.tmp
    run, prepared = _prepared(tmp)
    tokenizer = load_tokenizer("smollm2-135m")
    common = dict(r=args.lora_r, alpha=args.lora_r, lr=args.lr, batch=args.batch_size, accum=args.grad_accum)
    began = time.perf_counter()
    if side.startswith("ownllm"):
        from ownllm.training.trainer import Trainer

        out = os.path.join(tmp, f"ownllm-{time.time_ns()}")
        trainer = Trainer(model="smollm2-135m", train_dataset=run, args={
            "protect": "off" if side == "ownllm-off" else "default",
            "output_dir": out, "max_steps": args.steps, "batch_size": common["batch"],
            "grad_accum": common["accum"], "lr": common["lr"], "lora_r": common["r"], "lora_alpha": common["alpha"],
            "lora_dropout": 0.1, "max_seq_len": 512, "precision": args.precision, "seed": 42,
            "early_stopping_patience": 0, "warmup": 0, "scheduler": "linear",
            # like the baseline: no evaluation or checkpoints inside the timed loop
            "hf_args": {"eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False,
                        "metric_for_best_model": None, "greater_is_better": None}})
        summary = trainer.train()
        model = trainer.model.model if hasattr(trainer.model, "model") else trainer.model
        with open(os.path.join(out, "metrics.jsonl")) as f:
            seconds = next(r["train_runtime"] for r in map(json.loads, f) if "train_runtime" in r)
        tokens, trained = summary["train_tokens"], summary["trained_tokens"]
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

        from ownllm.models.load import local_folder, resolve

        base = AutoModelForCausalLM.from_pretrained(local_folder(resolve("smollm2-135m")),
                                                    dtype=torch.bfloat16 if args.hf_weights == "bf16" else torch.float32)
        model = get_peft_model(base, LoraConfig(r=common["r"], lora_alpha=common["alpha"], lora_dropout=0.1,
                                                target_modules="all-linear", task_type="CAUSAL_LM"))
        train = _tokenized(prepared.train, tokenizer)
        pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        counted = {"tokens": 0, "trained": 0}

        def collate(rows):
            batch = pad(rows)
            counted["tokens"] += int(batch["attention_mask"].sum())
            counted["trained"] += int((batch["labels"] != -100).sum())
            return batch

        targs = TrainingArguments(output_dir=os.path.join(tmp, "hf"), max_steps=args.steps,
                                  per_device_train_batch_size=common["batch"],
                                  gradient_accumulation_steps=common["accum"], learning_rate=common["lr"],
                                  lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.01, seed=42,
                                  bf16=args.precision == "bf16", use_cpu=True, report_to="none", save_strategy="no",
                                  logging_steps=10, disable_tqdm=True, dataloader_num_workers=0)
        output = Trainer(model=model, args=targs, train_dataset=train, data_collator=collate).train()
        seconds, tokens, trained = output.metrics["train_runtime"], counted["tokens"], counted["trained"]
    wall = time.perf_counter() - began
    val = _val_loss(model.float(), tokenizer, prepared.val)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"side": side, "seconds": seconds, "wall_seconds": wall, "tokens": tokens, "trained_tokens": trained,
            "tokens_per_second": tokens / seconds, "trained_tokens_per_second": trained / seconds,
            "peak_rss_mb": peak_mb, "val_loss": val}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--protect", default="both", choices=["both", "off", "default"],
                    help="ownllm's forgetting protection: off (the baseline's job), default (what a person gets) "
                         "or both (default)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--hf-weights", default="fp32", choices=["fp32", "bf16"],
                    help="dtype the baseline loads its weights in (default fp32)")
    ap.add_argument("--worker", choices=["ownllm-off", "ownllm-default", "hf"], help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)))
        return
    sides = ["hf"] + [f"ownllm-{p}" for p in (("off", "default") if args.protect == "both" else (args.protect,))]
    results = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        passthrough = [f"--steps={args.steps}", f"--batch-size={args.batch_size}", f"--grad-accum={args.grad_accum}",
                       f"--lora-r={args.lora_r}", f"--lr={args.lr}", f"--precision={args.precision}",
                       f"--hf-weights={args.hf_weights}", f"--tmp={tmp}"]
        for _ in range(args.rounds):
            for side in sides:
                proc = subprocess.run([sys.executable, __file__, "--worker", side] + passthrough,
                                      capture_output=True, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    sys.exit(f"{side} run failed:\n{proc.stderr[-3000:]}")
                r = json.loads(line[7:])
                results[side].append(r)
                print(f"{side:15s} {r['tokens_per_second']:7.1f} tokens/s  {r['trained_tokens_per_second']:6.1f} "
                      f"trained tokens/s  peak RSS {r['peak_rss_mb']:6.0f} MB  val loss {r['val_loss']:.4f}  "
                      f"({r['tokens']} tokens, train {r['seconds']:.1f} s, wall {r['wall_seconds']:.1f} s)", flush=True)
    print(f"\n{args.steps} steps × batch {args.batch_size} × accumulation {args.grad_accum}, LoRA r={args.lora_r}, "
          f"{args.precision}, baseline weights {args.hf_weights}; median [range] over {args.rounds} rounds, each "
          "ratio against the HF run of its round")
    for side in sides[1:]:
        pairs = list(zip(results[side], results["hf"]))

        def ratio(key):
            values = sorted(o[key] / h[key] for o, h in pairs)
            return f"{statistics.median(values):.2f} [{values[0]:.2f}–{values[-1]:.2f}]"

        print(f"{side}: useful tokens/s {ratio('tokens_per_second')}  trained tokens/s "
              f"{ratio('trained_tokens_per_second')}  train time {ratio('seconds')}  wall time {ratio('wall_seconds')}  "
              f"peak RSS {ratio('peak_rss_mb')}  val loss {ratio('val_loss')}")


if __name__ == "__main__":
    main()
