"""The README's family x stage table, from what the last test run saw (not written by hand).

    .venv/bin/python -m pytest -m "slow or not slow" tests/test_families.py   # writes test-artifacts/families.json
    .venv/bin/python benchmarks/families_table.py            # prints the table
    .venv/bin/python benchmarks/families_table.py --readme   # and puts it between README.md's family markers

A family with no result at a stage shows "not run" (the slow every-stage test was not part of that run).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
STAGES = ("prepare", "train (LoRA, protected)", "evaluate", "merge", "ONNX", "GGUF", "serve (torch, onnxruntime)")
START, END = "<!-- families:start -->", "<!-- families:end -->"


def table(results: dict) -> str:
    sys.path.insert(0, ROOT)
    from ownllm.models.registry import MODELS

    rows = ["| family (transformers model_type) | registry models | " + " | ".join(STAGES) + " |",
            "|---" * (len(STAGES) + 2) + "|"]
    for family in sorted(results):
        models = ", ".join(a for a, s in MODELS.items() if s.architecture == family) or "(folders of this type)"
        cells = [results[family].get(stage, "not run") for stage in STAGES]
        rows.append(f"| {family} | {models} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=os.path.join(ROOT, "test-artifacts", "families.json"))
    ap.add_argument("--readme", action="store_true", help="replace the table between README.md's family markers")
    args = ap.parse_args()
    if not os.path.exists(args.results):
        print(f"no results at {args.results}: run the family tests first (see this file's docstring)", file=sys.stderr)
        return 1
    with open(args.results, encoding="utf-8") as f:
        text = table(json.load(f))
    print(text)
    if args.readme:
        path = os.path.join(ROOT, "README.md")
        readme = open(path, encoding="utf-8").read()
        if START not in readme or END not in readme:
            print(f"README.md has no {START} ... {END} markers", file=sys.stderr)
            return 1
        readme = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{text}\n{END}", readme,
                        flags=re.S)
        with open(path, "w", encoding="utf-8") as f:
            f.write(readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
