"""Speed and memory of `prepare` on 100k realistic rows (the guide's medical example), near-dedup on.

Run: .venv/bin/python benchmarks/data_prepare.py [--rows 100000]
Target (issue 3): 100k rows in under 60 s on 2 cores, peak memory under 2 GB.
"""
import argparse
import json
import os
import random
import resource
import tempfile
import time

SYMPTOMS = ["头痛", "发热", "咳嗽", "腹痛", "失眠", "胸闷", "关节痛", "皮疹", "头晕", "乏力", "恶心", "腰痛"]
DURATIONS = ["两天", "一周", "三天", "半个月", "一个月", "几个小时"]
ADVICE = ["建议多喝水、注意休息，如症状持续请到门诊就诊。", "建议完善血常规检查，必要时复诊。",
          "建议清淡饮食，避免辛辣刺激食物。", "建议监测体温，体温超过38.5℃可服用退热药。",
          "建议尽快到医院做进一步检查，以排除器质性病变。"]
EN = ["My order {n} has not arrived after {d} days, what should I do?", "How do I reset device model {n}?",
      "Can I return item {n} bought {d} days ago?"]


def make_rows(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 4 == 3:
            q = rng.choice(EN).format(n=rng.randint(1000, 99999), d=rng.randint(1, 60))
            a = f"Please contact support with reference {rng.randint(10**5, 10**6)}; we answer within {rng.randint(1, 48)} hours."
        else:
            age = rng.randint(3, 90)
            q = (f"患者{age}岁，{rng.choice(SYMPTOMS)}{rng.choice(DURATIONS)}，伴有{rng.choice(SYMPTOMS)}，"
                 f"编号{rng.randint(10**6, 10**7)}，请问可能是什么原因？")
            a = f"根据描述，可能与{rng.choice(SYMPTOMS)}相关的{rng.choice(['炎症', '疲劳', '感染', '压力'])}有关。{rng.choice(ADVICE)}"
        out.append(json.dumps({"问题": q, "答案": a}, ensure_ascii=False))
        if i % 50 == 0 and out:
            out.append(out[rng.randrange(len(out))])          # exact duplicates
        if i % 500 == 0:
            out.append('{"问题": "broken json')                 # malformed rows
    return out[:n]


def main() -> None:
    from ownllm.data.prepare import prepare_dataset

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "medical.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(make_rows(args.rows)) + "\n")
        start = time.perf_counter()
        r = prepare_dataset([path], os.path.join(tmp, "run"), dedup="near").report
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"rows {r['total_rows']:,}  kept {r['kept_rows']:,}  rejected {r['rejected_rows']:,} "
          f"({r['rejected_by_reason']})")
    print(f"prepare: {seconds:.1f} s = {r['total_rows'] / seconds:,.0f} rows/s; peak RSS {peak:,.0f} MB "
          f"(targets: < 60 s, < 2048 MB)")


if __name__ == "__main__":
    main()
