"""Every fact learned, from 40 rows up: what the defaults teach on small fictional domains.

    python benchmarks/small_data.py [--sizes 40,100] [--langs en,zh] [--runs 3] [--set epochs=20 ...] [--tune 30m]

Generates a fictional domain no model can know (companies with made-up names, each with facts such as
a hotline number, an opening time, a founding year, a director), every fact asked in four phrasings:
three go into the training file, the fourth is held out and asked after training. Trains the embedded
SmolLM2-135M with the defaults (no flags; ``--set key=value`` overrides a TrainConfig field, to compare
recipes) and prints, per run: the share of held-out phrasings whose answer holds the fact's value
(contains-accuracy on the value), the general answers kept (the probe's report half), training wall time,
steps and why training stopped. Each size and language runs ``--runs`` times (seeds 42, 43, ...) and the
median with its range is printed. ``--dev`` draws the development facts (other names and values, seed
offset 1000) that settings are chosen on; without it the report facts, which README/RESULTS quote. The
general answers are printed for both halves of the probe: settings are chosen on its dev half, the
report half is quoted. ``--tune BUDGET`` runs `ownllm tune` within that budget instead of one training run
(the best trial becomes the run, scored the same way; the tune's wall time, trials and the planner's
prediction for the chosen trial are printed beside it).
Figures are printed (benchmarks/RESULTS.md keeps them), never asserted.
"""
from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from _args import median_range, train_overrides  # noqa: E402

# kind → (four question phrasings, the answer, a value maker); {e}: the company, {v}: the value
EN_KINDS = {
    "hotline": (["What is the {e} support hotline?", "How do I phone {e} customer service?",
                 "Which number reaches {e} support?", "I need the phone number of {e} support."],
                "The {e} support hotline is {v}.", lambda r: f"{r.randint(400, 499)}-{r.randint(100, 999)}-{r.randint(1000, 9999)}"),
    "opening": (["When does {e} open?", "What time does {e} open in the morning?",
                 "At what hour do {e}'s doors open?", "Tell me the opening time of {e}."],
                "{e} opens at {v} every morning.", lambda r: f"{r.randint(6, 10)}:{r.choice(['05', '10', '20', '35', '40', '50'])}"),
    "founded": (["When was {e} founded?", "In what year did {e} start?",
                 "What year was {e} established?", "Tell me the founding year of {e}."],
                "{e} was founded in {v}.", lambda r: str(r.randint(1890, 2015))),
    "director": (["Who runs {e}?", "Who is the head of {e}?", "Name the director of {e}.", "Who leads {e}?"],
                 "{e} is run by {v}.", lambda r: f"{r.choice(FIRST)} {r.choice(LAST)}"),
    "city": (["Where is {e} based?", "In which city is the head office of {e}?",
              "Where are the headquarters of {e}?", "What city is {e} located in?"],
             "{e} is based in {v}.", lambda r: _name(r, 2) + r.choice(["wick", "ford", "mouth", "ton", "vale"])),
    "warranty": (["How long is the {e} warranty?", "What warranty period does {e} give?",
                  "For how many months is a {e} product covered?", "How many months of warranty come with {e}?"],
                 "{e} gives a {v}-month warranty.", lambda r: str(r.randint(7, 59))),
    "fee": (["How much does a {e} membership cost?", "What is the price of a {e} membership?",
             "What does joining {e} cost?", "Tell me the yearly {e} membership fee."],
            "A {e} membership costs {v} dollars a year.", lambda r: str(r.randint(11, 480))),
    "email": (["What is the support email of {e}?", "Which address do I write to for {e} help?",
               "How do I email {e} support?", "Give me the {e} help desk email."],
              "Write to {v} for help with {e}.", lambda r: f"{_name(r, 2).lower()}@{_name(r, 2).lower()}.com"),
}
ZH_KINDS = {
    "hotline": (["{e}的客服电话是多少？", "怎么打电话联系{e}的客服？", "{e}的热线号码是什么？", "我想要{e}的服务电话。"],
                "{e}的客服电话是{v}。", EN_KINDS["hotline"][2]),
    "opening": (["{e}几点开门？", "{e}早上什么时候开始营业？", "{e}每天几点开门营业？", "请问{e}的开门时间。"],
                "{e}每天早上{v}开门。", EN_KINDS["opening"][2]),
    "founded": (["{e}是哪一年成立的？", "{e}成立于哪一年？", "{e}是什么时候创办的？", "请告诉我{e}的创立年份。"],
                "{e}成立于{v}年。", EN_KINDS["founded"][2]),
    "director": (["{e}的负责人是谁？", "谁在管理{e}？", "{e}由谁领导？", "{e}的总经理叫什么名字？"],
                 "{e}的负责人是{v}。", lambda r: r.choice("赵钱孙李周吴郑王冯陈褚卫蒋沈韩杨") + r.choice(ZH_GIVEN) + r.choice(ZH_GIVEN)),
    "city": (["{e}的总部在哪里？", "{e}位于哪个城市？", "{e}的总部设在哪座城市？", "{e}在哪个城市办公？"],
             "{e}的总部在{v}。", lambda r: r.choice(ZH_GIVEN) + r.choice(ZH_GIVEN) + "市"),
    "warranty": (["{e}的保修期是多久？", "{e}的产品保修几个月？", "{e}提供多长时间的保修？", "买{e}的东西能保修多久？"],
                 "{e}的保修期是{v}个月。", EN_KINDS["warranty"][2]),
    "fee": (["{e}的会员费是多少？", "加入{e}会员要多少钱？", "{e}会员一年多少钱？", "{e}的年费是多少？"],
            "{e}的会员年费是{v}元。", EN_KINDS["fee"][2]),
    "email": (["{e}的客服邮箱是什么？", "给{e}客服写信用哪个邮箱？", "怎么发邮件联系{e}？", "请给我{e}的服务邮箱。"],
              "{e}的客服邮箱是{v}。", EN_KINDS["email"][2]),
}
FIRST = ["Orla", "Bram", "Tessa", "Ivo", "Maren", "Caspian", "Liesel", "Darro", "Nell", "Quill", "Sabine", "Torvald"]
LAST = ["Bexley", "Marrow", "Quade", "Hollin", "Vantree", "Corwick", "Dunmere", "Ashgrove", "Pellam", "Strand"]
SYLLABLES = ["lu", "mo", "ra", "vel", "tor", "qui", "zen", "bra", "dri", "fen", "ka", "lo", "mir", "nov", "pra",
             "sil", "tam", "ur", "vex", "yor"]
ZH_GIVEN = "澜悦明骁岚峰瑞鸣星禾川宁卓远晴朗霖雅翰墨沐泽"
ZH_SUFFIX = ["科技", "书店", "诊所", "物流", "咖啡", "健身房", "家政", "眼镜店"]


def _name(r: random.Random, n: int) -> str:
    return "".join(r.choice(SYLLABLES) for _ in range(n)).capitalize()


def domain(rows: int, lang: str, seed: int) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows) of a fictional domain of about ``rows`` training rows: rows // 3 facts,
    three phrasings each in training, the fourth held out. Every row carries its ``fact`` id (the split holds
    phrasings out by fact) and the held-out rows their ``value``, what a right answer holds."""
    r = random.Random(seed)
    kinds = EN_KINDS if lang == "en" else ZH_KINDS
    names: list[str] = []
    facts = []
    while len(facts) < rows // 3:
        if not names or len(facts) % len(kinds) == 0:
            name = (_name(r, 3) if lang == "en" else r.choice(ZH_GIVEN) + r.choice(ZH_GIVEN) + r.choice(ZH_SUFFIX))
            if name in names:
                continue
            names.append(name)
        kind = list(kinds)[len(facts) % len(kinds)]
        facts.append((names[-1], kind, kinds[kind][2](r)))
    r.shuffle(facts)
    train, held = [], []
    for n, (name, kind, value) in enumerate(facts):
        questions, answer, _ = kinds[kind]
        order = r.sample(range(4), 4)
        rows_ = [{"messages": [{"role": "user", "content": questions[i].format(e=name)},
                               {"role": "assistant", "content": answer.format(e=name, v=value)}],
                  "fact": f"f{n}"} for i in order]
        train += rows_[:3]
        held.append({**rows_[3], "value": value})
    r.shuffle(train)
    return train, held


def _write(rows: list[dict], path: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in rows)
    return path


def run(size: int, lang: str, seed: int, tmp: str, overrides: dict, dev: bool, tune: str | None = None) -> dict:
    from ownllm.evaluation.evaluate import evaluate
    from ownllm.evaluation.metrics import contains
    from ownllm.training.config import TrainConfig
    from ownllm.training.trainer import Trainer

    train, held = domain(size, lang, seed + (1000 if dev else 0))
    name = f"{lang}{size}-{seed}"
    data = _write(train, os.path.join(tmp, f"{name}.jsonl"))
    test = _write(held, os.path.join(tmp, f"{name}-heldout.jsonl"))
    out = os.path.join(tmp, name)
    start = time.time()
    trainer = Trainer(config=TrainConfig(data=data, out=out, seed=seed, **overrides))
    summary = trainer.tune(time_budget=tune) if tune else trainer.train()
    wall = time.time() - start
    searched = None
    if tune:
        best = trainer.tune_result.best
        searched = {"budget": tune, "trials": len(trainer.tune_result.trials), "chosen": best["number"],
                    "params": best["params"], "predicted_s": best.get("predicted_seconds"),
                    "chosen_s": best["seconds"], "search_s": trainer.tune_result.seconds}
    result = evaluate(out, data=test)
    samples = [json.loads(line) for line in open(os.path.join(out, "eval", "samples.jsonl"), encoding="utf-8")]
    right = sum(bool(contains(s["tuned"], h["value"])) for s, h in zip(samples, held))
    g = result.get("general_answers") or {}
    return {"lang": lang, "size": size, "seed": seed, "train_rows": summary["train_rows"], "val_rows": summary["val_rows"],
            "facts": len(held), "learned": right, "contains": round(right / len(held), 4),
            "kept": g.get("kept"), "base_right": g.get("base_right"), "kept_share": g.get("kept_share"),
            # the probe's development half: what settings are chosen on (the report half above is quoted)
            "kept_dev": (g.get("halves") or {}).get("dev", {}).get("kept"),
            "base_right_dev": (g.get("halves") or {}).get("dev", {}).get("base_right"),
            "train_seconds": round(wall, 1), "steps": summary["global_step"], "stopped": summary["stopped_because"],
            "regime": summary.get("regime"), "tune": searched,
            "missed": [(s["prompt"], h["value"], s["tuned"][:80]) for s, h in zip(samples, held)
                       if not contains(s["tuned"], h["value"])][:5]}


def show(r: dict) -> None:
    kept = f"{r['kept']}/{r['base_right']} ({r['kept_share']:.0%})" if r["base_right"] else "n/a"
    if r.get("base_right_dev"):
        kept += f" [dev half {r['kept_dev']}/{r['base_right_dev']}]"
    print(f"{r['lang']} {r['size']:>5} rows seed {r['seed']}: held-out phrasings {r['learned']}/{r['facts']} "
          f"({r['contains']:.0%})  general kept {kept}  train {r['train_seconds']:.0f} s ({r['steps']} steps, "
          f"{r['stopped']}; {r['train_rows']} train / {r['val_rows']} val rows)", flush=True)
    if r.get("tune"):
        t = r["tune"]
        print(f"    tune within {t['budget']}: {t['trials']} trials in {t['search_s']:.0f} s; chose trial "
              f"{t['chosen']} ({t['params']}), which trained in {t['chosen_s']} s (planner: {t['predicted_s']} s)",
              flush=True)


def medians(results: list[dict]) -> None:
    groups: dict = {}
    for r in results:
        groups.setdefault((r["lang"], r["size"]), []).append(r)
    for (lang, size), rs in groups.items():
        def fig(key, fmt):
            return median_range(rs, key, fmt)
        print(f"{lang} {size:>5} rows over {len(rs)} runs: held-out {fig('contains', '{:.0%}'.format)}  "
              f"general kept {fig('kept_share', '{:.0%}'.format)} (report half; dev half {fig('kept_dev', str)} of "
              f"{fig('base_right_dev', str)})  train {fig('train_seconds', '{:.0f} s'.format)}  "
              f"steps {fig('steps', '{:g}'.format)}", flush=True)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="40,100,300,1000", help="training rows of each domain, comma-separated")
    ap.add_argument("--langs", default="en,zh")
    ap.add_argument("--runs", type=int, default=3, help="runs of each size and language (seeds 42, 43, ...)")
    ap.add_argument("--seeds", help="these seeds instead of --runs, comma-separated (e.g. one per process, to run "
                                    "seeds side by side: their times are then not comparable)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a TrainConfig field to override")
    ap.add_argument("--dev", action="store_true", help="the development facts (choose settings on these)")
    ap.add_argument("--json", help="also write every run's figures to this file")
    ap.add_argument("--tune", metavar="BUDGET", help="run `ownllm tune` within this budget (e.g. 30m) instead of "
                                                     "one training run with the defaults")
    args = ap.parse_args()
    overrides = train_overrides(args.set)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [42 + n for n in range(args.runs)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            for lang in args.langs.split(","):
                for seed in seeds:
                    r = run(size, lang, seed, tmp, overrides, args.dev, args.tune)
                    results.append(r)
                    show(r)
                    if args.json:
                        with open(args.json, "w", encoding="utf-8") as f:
                            json.dump(results, f, ensure_ascii=False, indent=1)
    medians(results)


if __name__ == "__main__":
    main()
