"""A person's rows are never silently lost or garbled: deduplication, per-file detection, encodings,
long fields and text, safe cleaning, bounded rejects, in-memory evaluation rows (issue 19)."""
import csv
import hashlib
import io
import json

import pytest

from ownllm.data.dedup import Deduplicator, distinct_parts, find_leaks
from ownllm.errors import DataError

SYSTEM = ("You are the support assistant of Northwind Appliances. Answer politely and briefly, in the "
          "customer's language. Never promise refunds that the policy does not allow; when unsure, tell the "
          "customer to contact support@northwind.example with their order number. Do not discuss competitors, "
          "do not give legal advice, and keep every answer under one hundred words.")  # 336+ characters

TOPICS = ["the kettle", "the toaster", "the blender", "the fridge", "the oven", "the dishwasher", "the fan",
          "the heater", "the kettle lid", "the mixer"]
ASKS = ["How do I clean {t}?", "Why does {t} make a noise?", "Where is the serial number on {t}?",
        "Can I order spare parts for {t}?", "Is {t} covered by the warranty?"]
PARTS = ["Use a soft cloth and mild soap", "Check that it stands on a flat surface", "Look under the base",
         "Yes, through our spare parts page", "Yes, for two years from purchase"]


def distinct_rows(n=200, system=SYSTEM):
    rows = []
    for i in range(n):
        t, k = TOPICS[i % len(TOPICS)], (i // len(TOPICS)) % len(ASKS)
        variant = i // (len(TOPICS) * len(ASKS))
        rows.append({"messages": [{"role": "system", "content": system},
                                  {"role": "user", "content": ASKS[k].format(t=t) + (" Thanks." * variant)},
                                  {"role": "assistant", "content": f"{PARTS[k]} for {t}; ticket class {i}."}]})
    return rows


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# -- deduplication ---------------------------------------------------------------------------
def test_a_long_shared_system_prompt_does_not_make_rows_duplicates(prep, tmp_path):
    assert len(SYSTEM) >= 336
    r = prep([jsonl(tmp_path / "d.jsonl", distinct_rows(200))])
    assert r.report["kept_rows"] == 200 and r.report["near_duplicates"] == 0
    # The same 40 rows with a 400-character --system, and with the person's own validation file.
    rows = [{"messages": x["messages"][1:]} for x in distinct_rows(40)]
    r = prep([jsonl(tmp_path / "s.jsonl", rows)], system="x " * 200)
    assert r.report["kept_rows"] == 40
    val = jsonl(tmp_path / "val.jsonl", [{"messages": x["messages"][1:]} for x in distinct_rows(60)[40:]])
    r = prep([jsonl(tmp_path / "s2.jsonl", rows)], system="y " * 200, val=val)
    assert r.report["leakage_removed"] == 0 and r.report["splits"]["train"] + r.report["splits"]["test"] == 40


def test_answers_that_differ_in_a_number_or_a_name_are_not_duplicates(prep, tmp_path):
    boiler = ("Take the tablets with water after a meal. Do not drive if you feel drowsy, and store the "
              "pack below 25 degrees, away from children. Ask your pharmacist before combining medicines. ")
    rows = [{"question": f"What dose of the syrup for patient file A-{i}?", "answer": boiler + f"The dose is {d} mg."}
            for i, d in zip(range(20), [5, 10] * 10)]
    r = prep([jsonl(tmp_path / "d.jsonl", rows)])
    assert r.report["kept_rows"] == 20
    d = Deduplicator("near")
    ask = [{"role": "user", "content": "Who signs the delivery note at the warehouse gate?"}]
    assert d.check({"messages": ask + [{"role": "assistant", "content": boiler + "Alice signs it."}]}, 1) == (None, None)
    assert d.check({"messages": ask + [{"role": "assistant", "content": boiler + "Bob signs it."}]}, 2) == (None, None)
    assert d.check({"messages": ask + [{"role": "assistant", "content": boiler + "Bob signs it!"}]}, 3)[0] == "near_duplicate"


def test_the_system_prompt_is_never_compared():
    row = distinct_rows(1)[0]
    other = {"messages": [{"role": "system", "content": "Something else entirely."}] + row["messages"][1:]}
    assert distinct_parts(row) == distinct_parts(other)
    assert find_leaks([row], [other]) == [(0, 0)]


def test_deduplication_past_max_rejected_fails_and_names_the_flag(prep, tmp_path):
    rows = distinct_rows(20)
    src = jsonl(tmp_path / "d.jsonl", rows + rows[:5])  # 5 of 25 (20%) are exact duplicates
    with pytest.raises(DataError) as e:
        prep([src])
    assert "--dedup exact" in str(e.value) and "--dedup off" in str(e.value) and "--max-rejected" in str(e.value)
    assert prep([src], dedup="off").report["kept_rows"] == 25
    r = prep([src], max_rejected=0.25, out=str(tmp_path / "run"))
    pairs = r.report["removed_pairs"]
    assert len(pairs) == 5 and pairs[0]["removed"].endswith(":21") and pairs[0]["kept"].endswith(":1")
    assert pairs[0]["removed_row"] == pairs[0]["kept_row"] and "clean the kettle" in pairs[0]["kept_row"]
    md = (tmp_path / "run" / "data" / "report.md").read_text(encoding="utf-8")
    assert "side by side" in md and "How do I clean the kettle?" in md


# -- detection ---------------------------------------------------------------------------------
def test_each_file_of_a_folder_is_detected_on_its_own(prep, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    jsonl(folder / "a.jsonl", [{"messages": x["messages"][1:]} for x in distinct_rows(20)])
    with open(folder / "b.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["问题", "答案"])
        w.writerows([[f"第{i}号产品如何保修？", f"第{i}号产品保修{i % 3 + 1}年，请携带发票。"] for i in range(15)])
    r = prep([str(folder)])
    assert r.report["kept_rows"] == 35 and r.report["format"] == "mixed"
    kinds = {k.rsplit("/", 1)[-1]: v["format"] for k, v in r.report["formats_by_file"].items()}
    assert kinds == {"a.jsonl": "messages", "b.csv": "prompt-completion"}


def test_broken_rows_at_the_start_do_not_hide_the_good_ones(prep, tmp_path):
    good = [{"question": f"What is code {i}?", "answer": f"Code {i} means step {i * 3}."} for i in range(2500)]
    src = tmp_path / "d.jsonl"
    src.write_text('{"question": "broken\n' * 200 + "".join(json.dumps(x) + "\n" for x in good), encoding="utf-8")
    r = prep([str(src)], dedup="exact")
    assert r.report["format"] == "prompt-completion" and r.report["kept_rows"] == 2500
    assert r.report["rejected_by_reason"] == {"bad_json": 200}


# -- encodings ----------------------------------------------------------------------------------
def _csv_bytes(rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["question", "answer"])
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def test_utf8_with_one_bad_byte_stays_utf8_and_only_that_row_is_rejected(prep, tmp_path):
    rows = [[f"Où est le café numéro {i} ?", f"Le café {i} est près de la gare, côté {i % 4}."] for i in range(40)]
    data = bytearray(_csv_bytes(rows))
    pos = data.index("numéro 7 ".encode()) + 2
    data[pos:pos + 2] = b"\xe9"          # one Latin-1 byte in the middle of a UTF-8 file
    (tmp_path / "d.csv").write_bytes(bytes(data))
    r = prep([str(tmp_path / "d.csv")], dedup="off", split="1,0,0")
    assert r.report["rejected_by_reason"] == {"bad_encoding": 1} and r.report["kept_rows"] == 39
    assert r.rejected[0]["line"] == 9 and "0xE9" in r.rejected[0]["detail"]
    kept = {m["content"] for row in r.train for m in row["messages"]}
    assert {q for i, (q, a) in enumerate(rows) if i != 7} <= kept and "Le café 0 est près de la gare, côté 0." in kept
    assert not any("Ã" in t for t in kept)
    # A Chinese JSONL with one bad byte: no crash, the other rows exactly as written.
    zh = [{"问题": f"第{i}条规定是什么？", "答案": f"第{i}条规定：员工每年享有{i + 5}天带薪年假。"} for i in range(30)]
    raw = bytearray("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in zh).encode("utf-8"))
    at = raw.index("第3条".encode()) + 1
    raw[at] = 0xFF
    (tmp_path / "zh.jsonl").write_bytes(bytes(raw))
    r = prep([str(tmp_path / "zh.jsonl")], dedup="off", split="1,0,0")
    assert r.report["rejected_by_reason"] == {"bad_encoding": 1} and r.report["kept_rows"] == 29
    answers = {row["messages"][-1]["content"] for row in r.train}
    assert answers == {x["答案"] for i, x in enumerate(zh) if i != 3}


def test_a_legacy_encoding_is_found_after_a_mib_of_ascii(prep, tmp_path):
    ascii_rows = [[f"What is item {i}?", f"Item {i} is a plain ASCII row of the catalogue."] for i in range(16000)]
    zh_rows = [[f"第{i}号商品的退货期限是多久？", f"第{i}号商品支持七天无理由退货。"] for i in range(200)]
    text = _csv_bytes(ascii_rows).decode() + "".join(f"{q},{a}\n" for q, a in zh_rows)
    assert len(_csv_bytes(ascii_rows)) > 1 << 20
    (tmp_path / "gb.csv").write_bytes(text.encode("gb18030"))
    r = prep([str(tmp_path / "gb.csv")], dedup="exact", split="1,0,0")
    assert r.report["kept_rows"] == 16200 and r.report["rejected_rows"] == 0
    assert list(r.report["encodings"].values()) == ["gb18030"]
    assert {"第7号商品支持七天无理由退货。"} <= {row["messages"][-1]["content"] for row in r.train}


# -- long fields and long text ----------------------------------------------------------------
def test_a_csv_field_over_the_csv_modules_limit_is_one_rejected_row(prep, tmp_path):
    rows = [[f"Question {i}?", f"Answer {i}."] for i in range(30)]
    rows[12][1] = "long " * 40_000   # 200,000 characters, over csv's default 131,072
    (tmp_path / "d.csv").write_bytes(_csv_bytes(rows))
    r = prep([str(tmp_path / "d.csv")], dedup="off")
    assert r.report["rejected_by_reason"] == {"too_long": 1} and r.rejected[0]["line"] == 14
    stored = r.rejected[0]["row"]
    assert isinstance(stored, str) and len(stored) < 2100 and "characters in all" in stored


def test_text_without_blank_lines_is_cut_at_sentence_ends_into_token_sized_chunks(prep, tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    en = " ".join(f"Sentence {i} of the manual explains how the pump number {i} is primed." for i in range(300))
    zh = "".join(f"第{i}步：打开阀门并检查压力表的读数。" for i in range(300))
    (tmp_path / "manual.txt").write_text(en + "\n" + zh + "\n", encoding="utf-8")
    r = prep([str(tmp_path / "manual.txt")], max_seq_len=256, dedup="off", split="1,0,0")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    chunks = [row["text"] for row in r.train]
    assert len(chunks) > 10 and r.report["rejected_rows"] == 0
    assert all(len(tok(c, add_special_tokens=False)["input_ids"]) <= 256 for c in chunks)
    assert all(c.endswith((".", "。")) for c in chunks)  # cut at sentence ends
    original = en + "\n" + zh
    assert all(c in original for c in chunks)  # nothing lost inside a chunk, nothing added
    assert sum(c.count("primed.") + c.count("读数。") for c in chunks) == 600


# -- cleaning ---------------------------------------------------------------------------------
def test_default_cleaning_keeps_meaning_and_the_options_are_counted(prep, tmp_path):
    rows = [{"question": "<table> 标签怎么写？", "answer": "写成 <table><tr><td>内容</td></tr></table>，&amp; 写作 &amp;amp;。"},
            {"question": "房间多大？", "answer": "10 m²，见图①……"}]
    rows += [{"question": f"Question {i}?", "answer": f"Answer {i}."} for i in range(10)]
    src = jsonl(tmp_path / "d.jsonl", rows)
    r = prep([src], split="1,0,0", dedup="off")
    texts = {m["content"] for row in r.train for m in row["messages"]}
    assert {"<table> 标签怎么写？", "写成 <table><tr><td>内容</td></tr></table>，&amp; 写作 &amp;amp;。", "10 m²，见图①……"} <= texts
    r = prep([src], split="1,0,0", dedup="off", normalize="nfkc", strip_html=True)
    assert r.report["cleaning"]["rows_changed_by_nfkc"] == 1 and r.report["cleaning"]["rows_changed_by_html_stripping"] == 1
    assert "10 m2，见图1......" in {m["content"] for row in r.train for m in row["messages"]}


# -- evaluation rows in memory, counts -------------------------------------------------------------
def test_in_memory_evaluation_rows_are_used_and_checked_for_leakage(tmp_path, tokenizer_dir, qa_file):
    from ownllm.training.config import TrainConfig
    from ownllm.rundir import RunDir
    from ownllm.training.data import prepare_for_training

    cfg = TrainConfig(model=tokenizer_dir)
    held = [{"messages": x["messages"][1:]} for x in distinct_rows(8)]
    data = prepare_for_training(qa_file, cfg, RunDir(tmp_path / "a"), held)
    assert len(data.val) == 8
    train = [{"messages": x["messages"][1:]} for x in distinct_rows(30)]
    data = prepare_for_training(train, cfg, RunDir(tmp_path / "b"),
                                held[:3] + [{"messages": [{"role": "user", "content": "A new question?"},
                                                          {"role": "assistant", "content": "A new answer."}]}])
    assert data.report["leakage_removed"] == 3 and len(data.train) == 27 and len(data.val) == 4


def test_the_row_counts_include_the_persons_test_file(prep, tmp_path):
    train = jsonl(tmp_path / "t.jsonl", [{"messages": x["messages"][1:]} for x in distinct_rows(120)])
    test = jsonl(tmp_path / "test.jsonl", [{"messages": x["messages"][1:]} for x in distinct_rows(160)[120:]])
    r = prep([train], test=test).report
    assert r["total_rows"] == 160 and r["kept_rows"] == 160 and r["splits"]["test"] == 40


def test_input_files_are_never_changed(prep, tmp_path):
    data = bytearray(_csv_bytes([[f"Q {i} é?", f"A {i}."] for i in range(20)]))
    data[-4] = 0xFF
    (tmp_path / "d.csv").write_bytes(bytes(data))
    before = hashlib.sha256(bytes(data)).hexdigest()
    prep([str(tmp_path / "d.csv")], out=str(tmp_path / "run"), dedup="off")
    assert hashlib.sha256((tmp_path / "d.csv").read_bytes()).hexdigest() == before
