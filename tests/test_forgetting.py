"""Forgetting protection and the general-ability probe: what a fine-tune keeps of the base model."""
import json
import math

import pytest
import torch

from ownllm.evaluation import probe
from ownllm.evaluation.metrics import normalize


def test_replay_prompts_never_ask_a_probe_question():
    """The measurement means nothing if training replays the questions the probe asks."""
    from ownllm.training.protect import replay_prompts

    questions = [normalize(i["question"]) for i in probe.probe_items()]
    replay = [normalize(p) for p in replay_prompts()]
    assert len(questions) >= 150 and len(replay) >= 100
    assert not set(questions) & set(replay)
    for r in replay:  # nor a near copy of one (a shared question with other words around it)
        words = set(r.split())
        for q in questions:
            qw = set(q.split())
            assert len(words & qw) / len(words | qw) < 0.6, (r, q)


def test_replay_follows_the_domains_language(monkeypatch):
    """A Chinese domain moves the model most on Chinese text: most of its replay rows are Chinese ones, and an
    English domain still gets some Chinese replay (half of the mix is the pool's)."""
    from types import SimpleNamespace

    from ownllm.training import protect

    pool = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "ok"}]}
            for p in protect.replay_prompts()]
    monkeypatch.setattr(protect, "base_answers", lambda model, tok, cfg, plain_text=False: pool)
    cfg, level = SimpleNamespace(seed=7), protect.Protection(replay_ratio=0.5, kl_weight=2.0)

    def chat(q, a):
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}

    def chinese_rows(domain):
        rows = protect.replay_rows(None, None, cfg, domain, level)
        assert len(rows) == 40 and len({r["messages"][0]["content"] for r in rows}) == 40
        return sum(protect.is_cjk(r["messages"][0]["content"]) for r in rows)

    pool_share = sum(protect.is_cjk(r["messages"][0]["content"]) for r in pool) / len(pool)
    zh, en = [chat("诊所几点开门？", "早上八点。")] * 80, [chat("When do you open?", "At 8 am.")] * 80
    assert protect.cjk_share(zh) == 1 and protect.cjk_share(en) == 0 and protect.cjk_share([{"text": "水"}]) == 1
    # a Chinese domain gets more Chinese replay than the pool's share, but never more than half
    assert chinese_rows(zh) == round(40 * min(0.5, (1 + pool_share) / 2)) == 20 > 40 * pool_share
    mixed = zh[:20] + en[:60]  # a quarter Chinese: half of that and half the pool's, under the cap
    assert chinese_rows(mixed) == round(40 * (0.25 + pool_share) / 2)
    assert 0 < chinese_rows(en) == round(40 * pool_share / 2)
    assert protect.replay_rows(None, None, cfg, zh, level) == protect.replay_rows(None, None, cfg, zh, level)


def test_probe_and_replay_are_fact_disjoint_and_the_probe_has_two_halves():
    """Every probe item names its fact and half; a fact's questions (English and Chinese) share one half;
    no replayed prompt asks a probe fact in any language, nor uses a format instruction the probe tests
    (the replay pool once held 意大利的首都 beside 'capital of Italy', and copies of the format items)."""
    from collections import defaultdict

    from ownllm.training.protect import replay_items

    items = probe.probe_items()
    halves, langs = defaultdict(set), defaultdict(set)
    for i in items:
        assert i["fact"] and i["half"] in ("dev", "report"), i
        halves[i["fact"]].add(i["half"])
        langs[i["fact"]].add(i["lang"])
    assert all(len(h) == 1 for h in halves.values())  # one fact, one half
    assert langs["capital-france"] == {"en", "zh"} and langs["6-times-7"] == {"en", "zh"}  # one fact, two languages
    for half in ("dev", "report"):
        of = [i for i in items if i["half"] == half]
        assert len(of) >= 0.4 * len(items) and {i["lang"] for i in of} == {"en", "zh"}
    replay = replay_items()
    assert all(r["prompt"] and r["lang"] in ("en", "zh") for r in replay)
    shared = {r["fact"] for r in replay if r["fact"]} & set(halves)
    assert not shared, shared
    formats = ["answer in one word", "reply with only a number", "answer yes or no", "capital letters", "upper case",
               "separated by commas", "with commas", "用一个词回答", "只用一个数字回答"]
    assert not [r["prompt"] for r in replay if any(f in r["prompt"].lower() for f in formats)]


def test_the_report_card_quotes_the_probes_report_half(monkeypatch):
    items = probe.probe_items()
    base = [{"id": i["id"], "lang": i["lang"], "question": i["question"], "answer": "a", "right": True} for i in items]
    dev_lost = {i["id"] for i in items if i["half"] == "dev"}  # the tuned model loses only development questions
    monkeypatch.setattr(probe, "ask", lambda model, tok, template, asked: [
        {"id": i["id"], "lang": i["lang"], "question": i["question"], "answer": "b", "right": i["id"] not in dev_lost}
        for i in asked])
    g = probe.compare_to_base(None, None, None, base)
    report = sum(i["half"] == "report" for i in items)
    assert g["half"] == "report" and g["kept"] == g["base_right"] == report and g["kept_share"] == 1.0
    assert g["halves"]["dev"] == {**g["halves"]["dev"], "kept": 0, "base_right": len(dev_lost)}
    assert g["all"]["kept"] == report and g["all"]["base_right"] == len(items) and g["warning"]  # decided on all


def test_probe_items_are_well_formed_in_both_languages():
    items = probe.probe_items()
    assert len({i["id"] for i in items}) == len(items)
    assert sum(i["lang"] == "zh" for i in items) >= 40 and sum(i["kind"] == "format" for i in items) >= 8
    for i in items:
        assert i["kind"] in ("fact", "format") and (i["answers"] or i.get("rule") == "list3"), i


@pytest.mark.parametrize("question_id,answer,right", [
    ("en-000", "The capital of France is Paris.", True),
    ("en-000", "The capital of France is called Le Système.", False),
    ("en-000", "Parisian cafés are nice.", False),         # a whole word, not a prefix
    ("en-090", "There are seven days in a week.", True),   # numbers as numbers, in words too
    ("en-090", "A week has 7 days.", True),
    ("en-090", "You can stay up to 17 hours a day.", False),
    ("zh-000", "中国的首都是北京。", True),
    ("zh-000", "中国的首都是上海。", False),
])
def test_probe_judges_whole_words_numbers_and_chinese(question_id, answer, right):
    item = next(i for i in probe.probe_items() if i["id"] == question_id)
    assert probe.judge(item, answer) is right


def test_probe_format_rules():
    def item(rule, answers):
        return {"kind": "format", "rule": rule, "answers": answers}

    assert probe.judge(item("one_word", ["green"]), "Green.")
    assert not probe.judge(item("one_word", ["green"]), "The answer is green.")
    assert probe.judge(item("number_only", ["4"]), "4")
    assert not probe.judge(item("number_only", ["4"]), "A dog has 4 legs.")
    assert probe.judge(item("list3", []), "red, green, blue")
    assert not probe.judge(item("list3", []), "red and blue")
    assert probe.judge(item("uppercase", ["HELLO"]), "HELLO")
    assert not probe.judge(item("uppercase", ["HELLO"]), "hello")
    assert probe.judge(item("yes_no", ["no"]), "No, ice is cold.")


def _train_on_probe(tiny_model_dir, items, max_steps=400):
    """A tiny model that has learned a few probe answers by heart (full fine-tune, plain torch, until it
    answers 10 of them: a fixed step count was enough on one CPU and not on another)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ownllm.models.templates import chat_template_for
    from ownllm.data.render import render_row

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    template = chat_template_for(tok)
    rendered = [render_row({"messages": [{"role": "user", "content": i["question"]},
                                         {"role": "assistant", "content": f"{i['answers'][0]}."}]}, tok, template=template)
                for i in items]
    longest = max(len(r.input_ids) for r in rendered)
    ids = torch.full((len(rendered), longest), tok.pad_token_id)
    labels = torch.full((len(rendered), longest), -100)
    mask = torch.zeros((len(rendered), longest), dtype=torch.long)
    for k, r in enumerate(rendered):
        ids[k, :len(r.input_ids)], labels[k, :len(r.labels)], mask[k, :len(r.input_ids)] = (
            torch.tensor(r.input_ids), torch.tensor(r.labels), 1)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(max_steps):
        if step and step % 20 == 0:
            model.eval()
            if sum(b["right"] for b in probe.ask(model, tok, template, items)) >= 10:
                break
            model.train()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tok, template


def test_probe_catches_a_damaged_model(tiny_model_dir):
    """A tiny model that answers some probe questions keeps them all; the same model with noise in its
    weights loses most of them, and the report's warning fires."""
    items = [i for i in probe.probe_items() if i["kind"] == "fact" and i["lang"] == "en"][:12]
    model, tok, template = _train_on_probe(tiny_model_dir, items)
    base = probe.ask(model, tok, template, items)
    assert sum(b["right"] for b in base) >= 8, [b["answer"] for b in base]
    same = probe.compare_to_base(model, tok, template, base)
    assert same["all"]["kept"] == same["all"]["base_right"] >= 8 and same["kept"] == same["base_right"]
    assert not same["warning"]
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * p.std())
    damaged = probe.compare_to_base(model, tok, template, base)
    assert damaged["all"]["kept"] <= damaged["all"]["base_right"] // 2 and damaged["warning"]
    assert damaged["lost_examples"] and damaged["lost_examples"][0]["question"] in [i["question"] for i in items]


def test_kl_sum_gradient_is_the_difference_of_distributions():
    from ownllm.training.protect import kl_sum, top_k_logprobs

    torch.manual_seed(0)
    tuned = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    base_logits = torch.randn(3, 7, dtype=torch.float64)
    # k = vocabulary - 1: the "others" bucket is one token, so the coarse KL is the exact one
    ids, lp = top_k_logprobs(base_logits, k=6)
    base = torch.log_softmax(base_logits, -1)
    assert torch.allclose(lp[:, :-1], base.gather(-1, ids)) and torch.allclose(lp.exp().sum(-1), torch.ones(3, dtype=lp.dtype))
    kl = kl_sum(tuned, ids, lp)
    expected = (base.exp() * (base - torch.log_softmax(tuned, -1))).sum()
    assert torch.allclose(kl, expected)
    kl.backward()
    assert torch.allclose(tuned.grad, torch.softmax(tuned, -1) - base.exp(), atol=1e-6)
    assert float(kl_sum(base_logits.clone(), ids, lp)) == pytest.approx(0.0, abs=1e-6)  # fp32 inside
    # the top 2 and one bucket: zero for the same model, the gradient q - p on the top tokens and
    # q (1 - p_rest / q_rest) on the others
    ids, lp = top_k_logprobs(base_logits, k=2)
    assert float(kl_sum(base_logits.clone(), ids, lp)) == pytest.approx(0.0, abs=1e-9)
    tuned.grad = None
    kl_sum(tuned, ids, lp).backward()
    q, p = torch.softmax(tuned.detach(), -1), base.exp()
    top = torch.zeros_like(q, dtype=torch.bool).scatter(-1, ids, True)
    p_rest, q_rest = (p * ~top).sum(-1, keepdim=True), (q * ~top).sum(-1, keepdim=True)
    assert torch.allclose(tuned.grad, torch.where(top, q - p, q * (1 - p_rest / q_rest)), atol=1e-9)


def test_kl_sum_matches_autograd_through_the_coarse_distribution():
    """kl_sum's written-out gradient is the one autograd gives through ``coarse_logprobs``, in fp32 and bf16, also
    where the tuned model is so sure of one token that the others' mass underflows."""
    from ownllm.training.protect import coarse_logprobs, kl_sum, top_k_logprobs

    torch.manual_seed(0)
    base_logits = torch.randn(6, 500) * 3
    ids, lp = top_k_logprobs(base_logits, k=16)
    tuned = base_logits + torch.randn(6, 500)
    tuned[0, 7] = 200.0  # every other token's probability is below exp(-100)
    for dtype in (torch.float32, torch.bfloat16):
        mine, ref = (tuned.to(dtype).clone().requires_grad_(True) for _ in range(2))
        value = kl_sum(mine, ids, lp)
        value.backward()
        coarse = coarse_logprobs(ref, ids)
        expected = (lp.exp() * (lp - coarse)).sum()
        expected.backward()
        assert torch.isfinite(value) and float(value) == pytest.approx(float(expected), rel=1e-5)
        assert mine.grad.dtype == dtype and torch.isfinite(mine.grad).all()
        assert torch.allclose(mine.grad.float(), ref.grad.float(), atol=1e-5 if dtype == torch.float32 else 1e-2)


def _lora_batch(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0),
                           autocast_adapter_dtype=False).eval()  # all float64: finite differences need it
    ids = torch.tensor([[5, 17, 300, 41, 9, 77, 12, 2], [8, 88, 900, 14, 3, 6, 2, 2]])
    mask = torch.tensor([[1] * 8, [1] * 7 + [0]])
    labels = torch.tensor([[-100, -100, -100, 41, 9, 77, 12, 2], [-100, -100, 900, 14, 3, 6, 2, -100]])
    return model, ids, mask, labels


def _protected_loss(model, ids, mask, labels, rows, kl_weight=1.0, k=64):
    from ownllm.training.hf import no_logits, trained_positions_loss
    from ownllm.training.protect import base_distributions

    loss_fn = trained_positions_loss(model, kl_weight)
    n = mask.sum(-1)
    targets = base_distributions(model, [{"input_ids": ids[i, :n[i]].tolist(), "labels": labels[i, :n[i]].tolist()}
                                         for i in range(len(ids)) if rows[i]], pad_id=0, k=k)
    loss_fn.set_replay(rows, torch.cat([t[0] for t in targets]), torch.cat([t[1] for t in targets]))
    with loss_fn.capturing():
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=no_logits(ids))
        return loss_fn(out, labels)


def test_kl_term_is_zero_for_a_zero_adapter_and_matches_finite_differences(tiny_model_dir):
    model, ids, mask, labels = _lora_batch(tiny_model_dir)
    replay_only = torch.tensor([True, True])
    assert abs(float(_protected_loss(model, ids, mask, labels, replay_only))) < 1e-12  # LoRA B starts at zero
    torch.manual_seed(0)
    params = [p for n, p in model.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.05)
    loss = _protected_loss(model, ids, mask, labels, replay_only)
    assert float(loss) > 0
    p = params[3]
    (grad,) = torch.autograd.grad(loss, p)
    h, idx = 1e-3, (1, 2)  # the model's attention softmax runs in fp32 even in a float64 model: ~1e-8 noise
    with torch.no_grad():
        p[idx] += h
        up = float(_protected_loss(model, ids, mask, labels, replay_only))
        p[idx] -= 2 * h
        down = float(_protected_loss(model, ids, mask, labels, replay_only))
        p[idx] += h
    assert (up - down) / (2 * h) == pytest.approx(float(grad[idx]), rel=1e-3)
    # a mixed batch: the domain row keeps its cross-entropy, the replay row adds its weighted KL
    mixed = torch.tensor([False, True])
    ce_only = _protected_loss(model, ids, mask, labels, mixed, kl_weight=0.0)
    both = _protected_loss(model, ids, mask, labels, mixed, kl_weight=2.0)
    assert float(both) > float(ce_only) > 0


def test_general_drift_is_zero_for_the_base_and_the_mean_kl_per_answer_token(tiny_model_dir):
    from ownllm.training.protect import base_distributions, general_drift

    model, ids, mask, labels = _lora_batch(tiny_model_dir)
    n = mask.sum(-1)
    rows = [{"input_ids": ids[i, :n[i]].tolist(), "labels": labels[i, :n[i]].tolist()} for i in range(len(ids))]
    targets = base_distributions(model, rows, pad_id=0, k=64)
    assert general_drift(model, rows, targets, pad_id=0) < 1e-12  # LoRA B starts at zero: the base model itself
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    # the protected loss of the two rows, both replayed with KL weight 1, is the KL summed over their 9 answer
    # positions divided by those 9: the same mean
    mean = float(_protected_loss(model, ids, mask, labels, torch.tensor([True, True])))
    assert general_drift(model, rows, targets, pad_id=0, batch=1) == pytest.approx(mean, rel=1e-9) and mean > 0


def test_protected_run_replays_general_answers_and_validates_on_the_domain_only(tiny_model_dir, qa_file, tmp_path,
                                                                              monkeypatch):
    import yaml

    from ownllm.training import hf
    from ownllm.training.trainer import Trainer

    seen, kl_terms = [], []
    real, real_kl = hf.HFTrainer.evaluate, hf.kl_sum

    def spy(self, *args, **kwargs):
        seen.append((len(self.eval_dataset), self.eval_dataset.column_names))
        return real(self, *args, **kwargs)

    def kl_spy(tuned_logits, top_ids, top_logprobs):
        value = real_kl(tuned_logits, top_ids, top_logprobs)
        kl_terms.append((tuned_logits.shape[0], value.requires_grad))
        return value

    monkeypatch.setattr(hf.HFTrainer, "evaluate", spy)
    monkeypatch.setattr(hf, "kl_sum", kl_spy)
    monkeypatch.setattr("ownllm.data.regime.TRUSTED_VAL_ROWS", 4)  # the 4 validation rows choose the checkpoint
    args = {"precision": "fp32", "batch_size": 4, "max_steps": 2, "save_steps": 2, "early_stopping_patience": 0,
            "output_dir": str(tmp_path / "p")}
    summary = Trainer(model=tiny_model_dir, train_dataset=qa_file, args=args).train()
    p = summary["protection"]
    # 32 training rows, under SMALL_DATA_ROWS: the default level protects with strong's settings
    assert p["applied"] and p["small_dataset"] and p["kl_weight"] == 3.0
    assert p["replay_rows"] == max(16, math.ceil(0.75 * summary["train_rows"]))
    assert seen and all(n == summary["val_rows"] and "replay" not in cols for n, cols in seen)
    # the KL term reached the training loss: computed on replayed answer positions, with gradients
    assert any(positions > 0 and grad for positions, grad in kl_terms), kl_terms
    # early stopping and the best checkpoint follow the domain's validation loss plus the weighted drift on
    # replayed rows
    evals = [json.loads(line) for line in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()
             if "eval_protected_loss" in line]
    assert evals and summary["best_checkpoint_by"] == "eval_protected_loss"
    for e in evals:
        assert e["eval_protected_loss"] == pytest.approx(e["eval_loss"] + 3.0 * e["eval_general_drift"], abs=3e-5)
    assert summary["best_val_loss"] == evals[-1]["eval_loss"] and summary["general_drift"] == evals[-1][
        "eval_general_drift"]
    assert yaml.safe_load((tmp_path / "p" / "config.yaml").read_text())["protect"] == "default"
    off = Trainer(model=tiny_model_dir, train_dataset=qa_file, args={**args, "output_dir": str(tmp_path / "o"),
                                                                      "protect": "off"}).train()
    assert off["protection"] == {"level": "off", "applied": False}
    full = Trainer(model=tiny_model_dir, train_dataset=qa_file, args={**args, "output_dir": str(tmp_path / "f"),
                                                                       "method": "full"}).train()
    assert full["protection"]["applied"] is False  # no adapter to switch off: the base is not in memory


def test_resumed_protected_run_reports_its_best_checkpoints_domain_loss(tiny_model_dir, qa_file, tmp_path,
                                                                         monkeypatch):
    from ownllm.training import hf
    from ownllm.training.trainer import Trainer

    monkeypatch.setattr("ownllm.data.regime.TRUSTED_VAL_ROWS", 4)  # the 4 validation rows choose the checkpoint
    args = {"precision": "fp32", "batch_size": 4, "max_steps": 4, "save_steps": 2, "early_stopping_patience": 0,
            "output_dir": str(tmp_path / "r")}
    Trainer(model=tiny_model_dir, train_dataset=qa_file, args=args).train()
    first = {e["step"]: e for e in map(json.loads, (tmp_path / "r" / "metrics.jsonl").read_text().splitlines())
             if "eval_protected_loss" in e}
    # resumed from checkpoint-2, whose evaluation came before the resume; step 4's now drifts far from the
    # base model, so step 2 stays the best checkpoint
    monkeypatch.setattr(hf, "general_drift", lambda *a, **k: 100.0)
    resumed = Trainer(model=tiny_model_dir, train_dataset=qa_file, args=args)
    resumed.resume_from_checkpoint("checkpoint-2")
    summary = resumed.train()
    assert summary["best_checkpoint"].endswith("checkpoint-2")
    assert summary["best_val_loss"] == first[2]["eval_loss"]  # the domain's loss, not the protected one
    assert summary["general_drift"] == first[2]["eval_general_drift"]


def test_report_card_counts_kept_answers_and_warns(tiny_model_dir, qa_file, tmp_path):
    from ownllm.evaluation.evaluate import evaluate
    from ownllm.evaluation.report import forgetting_warnings, to_markdown
    from ownllm.training.trainer import Trainer

    Trainer(model=tiny_model_dir, train_dataset=qa_file, args={"precision": "fp32", "batch_size": 4, "max_steps": 1,
                                                                "output_dir": str(tmp_path / "r")}).train()
    result = evaluate(str(tmp_path / "r"), max_new_tokens=4)
    g = result["general_answers"]
    assert g["questions"] == len(probe.probe_items()) and "general answers kept" in result["headline"]
    saved = json.loads((tmp_path / "r" / "eval" / "metrics.json").read_text())
    assert saved["general_answers"] == g
    # --no-base: the base answers cached by the evaluation above are reused
    assert evaluate(str(tmp_path / "r"), no_base=True, max_new_tokens=4)["general_answers"]["questions"] == g["questions"]

    lost = {"questions": 176, "base_right": 60, "kept": 30, "kept_share": 0.5, "warning": True,
            "lost_examples": [{"question": "What is the capital of France?", "base": "Paris.", "tuned": "Le Système."}]}
    card = {"headline": "h", "tuned": {}, "general_answers": lost, "general_perplexity_change": 0.72}
    warnings = forgetting_warnings(card)
    assert len(warnings) == 2 and "30 of the 60" in warnings[0] and "72%" in warnings[1]
    md = to_markdown(card, [])
    assert "Le Système" in md and "## What the model kept" in md
    assert not forgetting_warnings({**card, "general_answers": {**lost, "warning": False},
                                    "general_perplexity_change": 0.05})


def test_planner_counts_the_replayed_rows():
    from ownllm.planning.profiles import get_profile
    from ownllm.planning.plan import plan, spec_for
    from ownllm.training.protect import replay_for_plan, replay_prompts

    spec, gpu = spec_for("smollm2-135m"), get_profile("RTX 4090")
    replay = replay_for_plan("default", "lora", 1000)
    assert replay == len(replay_prompts()) and replay_for_plan("off", "lora", 1000) == 0 and replay_for_plan("default", "full", 1000) == 0
    plain = plan(spec, gpu, examples=1000, tokens_per_example=100)
    protected = plan(spec, gpu, examples=1000, tokens_per_example=100, replay_rows=replay)
    assert protected["examples"] == 1000 and protected["replay_rows"] == replay
    # each replayed row trains, and the base model's distributions on them are computed once: a little more
    # than their share of the time
    assert 1 + replay / 1000 < protected["hours"] / plain["hours"] < 1 + 1.2 * replay / 1000


def test_planner_counts_the_drift_scored_at_each_validation():
    from ownllm.planning.estimate import Job, train_time
    from ownllm.planning.plan import spec_for
    from ownllm.training.protect import DRIFT_ROWS

    shape, job = spec_for("smollm2-135m"), Job(method="lora", precision="bf16", micro_batch=8)

    def validation_flops(replay_rows):
        def flops(val_fraction):
            return train_time(shape, job, 100.0, examples=500, tokens_per_example=60, epochs=3, mfu=0.3,
                              val_fraction=val_fraction, replay_rows=replay_rows, replay_tokens=80,
                              drift_rows=DRIFT_ROWS).flops
        return flops(0.1) - flops(0.0)

    # each validation (once per epoch) runs DRIFT_ROWS replayed rows forward, beside the domain's rows
    extra = validation_flops(51) - validation_flops(0)
    assert extra == pytest.approx(2 * shape.params * DRIFT_ROWS * 80 * 3, rel=1e-9)
    # fewer replayed rows than DRIFT_ROWS: all of them
    assert validation_flops(5) - validation_flops(0) == pytest.approx(2 * shape.params * 5 * 80 * 3, rel=1e-9)


def test_drift_rows_are_in_the_replays_language_mix(monkeypatch):
    """The first DRIFT_ROWS replay rows steer early stopping and the best checkpoint: for an English
    domain they hold as many Chinese rows as the replay's share says (they were all Chinese first)."""
    from types import SimpleNamespace

    from ownllm.training import protect

    pool = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "ok"}]}
            for p in protect.replay_prompts()]
    monkeypatch.setattr(protect, "base_answers", lambda model, tok, cfg, plain_text=False: pool)
    en = [{"messages": [{"role": "user", "content": f"When do you open on day {i}?"},
                        {"role": "assistant", "content": "At 8 am."}]} for i in range(144)]
    zh = [{"messages": [{"role": "user", "content": "诊所几点开门？"}, {"role": "assistant", "content": "早上八点。"}]}] * 144
    for domain in (en, zh, en[:100] + zh[:44]):
        for seed in (1, 7, 42):
            rows = protect.replay_rows(None, None, SimpleNamespace(seed=seed), domain, protect.LEVELS["default"])
            share = sum(protect.is_cjk(r["messages"][0]["content"]) for r in rows) / len(rows)
            first = rows[:protect.DRIFT_ROWS]
            assert sum(protect.is_cjk(r["messages"][0]["content"]) for r in first) == round(share * len(first))
    assert "".join(protect.interleave(list("aa"), list("bbbbbb"))) == "babbbabb"
    merged = protect.interleave(list(range(3)), list("xyzuvw"))
    assert sorted(map(str, merged)) == sorted(map(str, [0, 1, 2, *"xyzuvw"]))  # nothing lost, nothing repeated
