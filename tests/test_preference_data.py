"""Preference data everywhere data goes (issue 41, part 2): pairs (prompt, chosen, rejected), good/bad labels
(prompt, completion, label) and ownllm's own feedback.jsonl, read by `data inspect/prepare`, checked by the
doctor with the same row accounting, kept out of supervised training where an answer is labelled bad."""
from __future__ import annotations

import csv
import hashlib
import json

import pytest

from ownllm.data.feedback import Feedback, record
from ownllm.data.prepare import PreparedData
from ownllm.errors import DataError


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _pairs(n: int) -> list[dict]:
    return [{"prompt": f"What does plan {i} cost per year?", "chosen": f"Plan {i} costs {i * 7 + 3} yuan a year.",
             "rejected": f"I am not sure about plan {i}."} for i in range(n)]


def _everything(r: PreparedData) -> list[dict]:
    return r.train + r.val + r.test


def test_pairs_become_chat_rows_with_their_rejected_answer_and_bad_pairs_are_accounted_for(prep, tmp_path):
    rows = _pairs(30) + [
        {"prompt": "Same?", "chosen": "The same answer.", "rejected": "the  same answer."},   # 31: identical
        {"prompt": "Empty?", "chosen": "An answer.", "rejected": "   "},                    # 32: empty side
        {"prompt": "Missing?", "chosen": "An answer."},                                      # 33: missing side
        {"prompt": "Type?", "chosen": "An answer.", "rejected": {"text": "no"}},            # 34: wrong type
        _pairs(1)[0],                                                                        # 35: duplicate
    ]
    src = _jsonl(tmp_path / "pairs.jsonl", rows)
    before = _digest(src)
    with pytest.raises(DataError, match="identical_pair 1, empty_content 1, missing_field 1, wrong_type 1"):
        prep([src])  # 4 of 35 invalid: past the default --max-rejected of 10%, each reason counted
    r = prep([src], out=str(tmp_path / "run"), max_rejected=0.2)
    rep = r.report
    assert rep["format"] == "preference"
    assert rep["total_rows"] == 35 and rep["kept_rows"] == 30 and rep["rejected_rows"] == 5
    by_line = {x["line"]: x["reason"] for x in r.rejected}
    assert by_line == {31: "identical_pair", 32: "empty_content", 33: "missing_field", 34: "wrong_type",
                       35: "duplicate"}
    row = next(x for x in _everything(r) if "plan 4 " in x["messages"][0]["content"])
    assert row["messages"] == [{"role": "user", "content": "What does plan 4 cost per year?"},
                               {"role": "assistant", "content": "Plan 4 costs 31 yuan a year."}]
    assert row["rejected"] == "I am not sure about plan 4."
    assert rep["preference"]["kinds"] == {"supervised": 0, "pair": 30, "good": 0, "bad": 0}
    written = [json.loads(x) for x in (tmp_path / "run/data/train.jsonl").read_text().splitlines()]
    assert all("rejected" in x for x in written) and len(written) == rep["splits"]["train"]
    md = (tmp_path / "run/data/report.md").read_text()
    assert "30 pairs" in md and "identical_pair" in md
    assert _digest(src) == before


def test_conversational_pairs_with_and_without_a_prompt_column(prep, tmp_path):
    convo = [{"role": "user", "content": "天空是什么颜色？"}]
    rows = [  # UltraFeedback: a prompt and two conversations that repeat it
        {"prompt": "天空是什么颜色？", "chosen": convo + [{"role": "assistant", "content": "晴天时是蓝色。"}],
         "rejected": convo + [{"role": "assistant", "content": "绿色。"}]},
        # Anthropic HH: no prompt column, the conversation is in the answers (ShareGPT roles too)
        {"chosen": [{"from": "human", "value": "草是什么颜色？"}, {"from": "gpt", "value": "通常是绿色。"}],
         "rejected": [{"from": "human", "value": "草是什么颜色？"}, {"from": "gpt", "value": "紫色。"}]},
        # the two answers continue different conversations: not a pair
        {"chosen": [{"role": "user", "content": "一？"}, {"role": "assistant", "content": "是。"}],
         "rejected": [{"role": "user", "content": "二？"}, {"role": "assistant", "content": "否。"}]},
    ]
    r = prep([_jsonl(tmp_path / "zh.jsonl", rows)], split="1,0,0", max_rejected=0.5)
    got = {x["messages"][-2]["content"]: x for x in r.train}
    assert got["天空是什么颜色？"]["messages"][-1]["content"] == "晴天时是蓝色。"
    assert got["天空是什么颜色？"]["rejected"] == "绿色。"
    assert [m["role"] for m in got["草是什么颜色？"]["messages"]] == ["user", "assistant"]
    assert got["草是什么颜色？"]["rejected"] == "紫色。"
    assert [x["reason"] for x in r.rejected] == ["bad_order"] and r.rejected[0]["line"] == 3


def test_good_and_bad_labels_in_every_spelling_and_a_label_column_of_categories_stays_supervised(prep, tmp_path):
    path = tmp_path / "labels.csv"
    spellings = ["true", "false", "1", "0", "good", "bad", "👍", "👎", "好", "差"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "completion", "label"])
        for i in range(30):
            w.writerow([f"Is order {i} shipped yet?", f"Order {i} left the warehouse on day {i + 2}.",
                        spellings[i % len(spellings)]])
        w.writerow(["Is order 99 shipped?", "Maybe.", "meh"])          # line 32 of the file, row 31
    r = prep([str(path)], split="1,0,0", max_rejected=0.5)
    assert r.report["format"] == "labels"
    labels = {x["messages"][-2]["content"]: x["label"] for x in r.train}
    assert labels["Is order 0 shipped yet?"] is True and labels["Is order 1 shipped yet?"] is False
    assert labels["Is order 6 shipped yet?"] is True and labels["Is order 9 shipped yet?"] is False  # 👍 … 差
    assert r.report["preference"]["kinds"] == {"supervised": 0, "pair": 0, "good": 15, "bad": 15}
    assert [x["reason"] for x in r.rejected] == ["bad_label"]

    topics = tmp_path / "topics.jsonl"
    r = prep([_jsonl(topics, [{"prompt": f"Where is parcel {i}?", "completion": f"Parcel {i} is in hub {i}.",
                               "label": "shipping"} for i in range(12)])], split="1,0,0")
    assert r.report["format"] == "prompt-completion" and "preference" not in r.report
    assert all("label" not in x for x in r.train)


def _feedback_file(path) -> str:
    asked = lambda i: [{"role": "system", "content": "你是客服。"},  # noqa: E731
                       {"role": "user", "content": f"{i}号门店几点开门？"}]
    for i in range(12):
        record(str(path), Feedback(asked(i), f"{i}号门店{i % 3 + 8}点开门。", label="good", model="sha256:aaaa",
                                   source="chat"))
        record(str(path), Feedback(asked(i + 100), "我不知道。", label="bad", model="sha256:aaaa", source="studio"))
        record(str(path), Feedback(asked(i + 200), "不清楚。", better=f"{i + 200}号门店九点开门。",
                                   model="sha256:bbbb" if i < 2 else "sha256:aaaa", source="serve"))
    return str(path)


def test_feedback_file_better_answers_are_pairs_labels_stay_labels_and_other_models_are_flagged(prep, tmp_path):
    src = _feedback_file(tmp_path / "feedback.jsonl")
    before = _digest(src)
    r = prep([src], out=str(tmp_path / "run"))
    rep = r.report
    assert rep["format"] == "feedback" and rep["total_rows"] == 36 and rep["kept_rows"] == 36
    assert rep["preference"]["kinds"] == {"supervised": 0, "pair": 12, "good": 12, "bad": 12}
    assert rep["preference"]["answers_by_model"] == {"sha256:aaaa": 34, "sha256:bbbb": 2}
    pair = next(x for x in _everything(r) if x["messages"][-2]["content"] == "205号门店几点开门？")
    assert pair["messages"][0] == {"role": "system", "content": "你是客服。"}
    assert pair["messages"][-1] == {"role": "assistant", "content": "205号门店九点开门。"}   # the better answer
    assert pair["rejected"] == "不清楚。" and pair["model"] == "sha256:aaaa"
    assert "several models" in (tmp_path / "run/data/report.md").read_text()
    assert _digest(src) == before
    # the same answer judged good by one person and bad by another: both judgements are kept
    twice = tmp_path / "twice.jsonl"
    row = {"messages": [{"role": "user", "content": "几点关门？"}], "answer": "晚上九点。", "model": "m"}
    _jsonl(twice, [{**row, "label": "good"}, {**row, "label": "bad"}, {**row, "label": "good"}])
    r = prep([str(twice)], split="1,0,0", max_rejected=0.5)
    assert sorted(x["label"] for x in r.train) == [False, True]
    assert [x["reason"] for x in r.rejected] == ["duplicate"]


def test_forced_preference_format_names_what_the_rows_lack(prep, tmp_path):
    src = _jsonl(tmp_path / "plain.jsonl", [{"question": "Q?", "answer": "A."}] * 3)
    for fmt, needs in (("preference", "'chosen' and 'rejected'"), ("labels", "'label'"), ("feedback", "'messages'")):
        with pytest.raises(DataError, match=needs):
            prep([src], format=fmt)


def test_supervised_training_never_learns_a_bad_answer_and_evaluation_never_scores_against_one(tmp_path):
    from ownllm.evaluation.evaluate import _test_rows
    from ownllm.rundir import RunDir
    from ownllm.training.train import _supervised

    def chat(q, a, **judged):
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], **judged}

    train = [chat("a?", "good", label=True), chat("b?", "bad", label=False), chat("c?", "better", rejected="worse"),
             chat("d?", "plain")]
    facts: dict = {}
    learned, val = _supervised(PreparedData(train, [chat("e?", "bad", label=False)], [], {}), facts)
    assert [x["messages"][-1]["content"] for x in learned] == ["good", "better", "plain"]
    assert val == [] and facts["bad_answers_left_out"] == 2
    with pytest.raises(DataError, match="labelled bad"):
        _supervised(PreparedData([chat("b?", "bad", label=False)], [], [], {}), {})

    run = RunDir(str(tmp_path / "run"))
    import os
    os.makedirs(run.data_dir)
    _jsonl(tmp_path / "run/data/test.jsonl", train)
    scored = _test_rows(run, None, None)
    assert [x["messages"][-1]["content"] for x in scored] == ["good", "better", "plain"]


def test_data_inspect_prints_the_preference_line(tmp_path):
    import subprocess
    import sys

    src = _feedback_file(tmp_path / "feedback.jsonl")
    out = subprocess.run([sys.executable, "-m", "ownllm", "data", "inspect", src], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "format: **feedback**" in out.stdout and "12 pairs" in out.stdout and "12 answers labelled good" in out.stdout
