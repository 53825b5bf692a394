import hashlib
import json

import pytest

from ownllm.data import clean as C
from ownllm.data.dedup import Deduplicator, find_leaks
from ownllm.data.render import IGNORE, render_row
from ownllm.data.split import split_rows
from ownllm.errors import ConfigError, DataError


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return str(path)


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def chat(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def rows_jsonl(n=30, offset=0):
    return "".join(json.dumps(chat(f"Question number {i} about topic {i * 13}?", f"Answer {i}: value {i * 7}.")) + "\n"
                   for i in range(offset, offset + n))


def test_prepare_writes_every_output(prep, tmp_path):
    src = write(tmp_path / "d.jsonl", rows_jsonl(50))
    before = digest(src)
    r = prep([src], out=str(tmp_path / "run"))
    rep = json.loads((tmp_path / "run/data/report.json").read_text())
    for key in ("format", "total_rows", "kept_rows", "rejected_rows", "rejected_by_reason", "duplicates_removed",
                "splits", "tokens", "truncated_rows", "train_tokens_per_epoch"):
        assert key in rep
    assert rep["splits"] == {"train": 40, "val": 5, "test": 5}
    assert rep["format"] == "messages" and rep["total_rows"] == 50
    for f in ("train.jsonl", "val.jsonl", "test.jsonl", "rejected.jsonl", "report.md", "length_histogram.png"):
        assert (tmp_path / "run/data" / f).exists()
    assert digest(src) == before
    assert r.report["tokens"]["max"] >= r.report["tokens"]["p95"] >= r.report["tokens"]["p50"] > 0


def test_bad_json_line_is_rejected_with_its_line(prep, tmp_path):
    text = rows_jsonl(20).splitlines()
    text.insert(6, '{"messages": [broken')
    src = write(tmp_path / "d.jsonl", "\n".join(text) + "\n")
    r = prep([src], out=str(tmp_path / "run"))
    bad = [x for x in r.rejected if x["reason"] == "bad_json"]
    assert len(bad) == 1 and bad[0]["line"] == 7
    with pytest.raises(DataError, match=r"d.jsonl:7"):
        prep([src], strict=True)


def test_row_level_problems_are_categorised(prep, tmp_path):
    good = [chat(f"Good question {i} here?", f"Good answer {i}.") for i in range(40)]
    bad = [
        {"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": "not a list"},
        ["not", "an", "object"],
    ]
    src = write(tmp_path / "d.jsonl", "".join(json.dumps(x) + "\n" for x in good + bad))
    r = prep([src], max_rejected=0.5)
    reasons = r.report["rejected_by_reason"]
    for reason in ("unknown_role", "empty_content", "no_assistant_turn", "wrong_type", "not_an_object"):
        assert reasons.get(reason) == 1, reasons
    with pytest.raises(DataError, match="more than --max-rejected"):
        prep([src], max_rejected=0.05)


def test_empty_binary_missing_and_mixed_folder(prep, tmp_path):
    with pytest.raises(DataError, match="empty"):
        prep([write(tmp_path / "e.jsonl", "")])
    (tmp_path / "b.jsonl").write_bytes(b"\x00\x01\x02binary\x00")
    with pytest.raises(DataError, match="binary"):
        prep([str(tmp_path / "b.jsonl")])
    with pytest.raises(DataError, match="not found"):
        prep([str(tmp_path / "missing.jsonl")])
    folder = tmp_path / "mixed"
    folder.mkdir()
    write(folder / "a.jsonl", rows_jsonl(15))
    write(folder / "b.json", json.dumps([chat(f"Other question {i} on subject {i}?", f"Other answer {i}.") for i in range(15)]))
    write(folder / "notes.docx", "ignored")
    r = prep([str(folder)])
    assert r.report["total_rows"] == 30 and r.report["skipped_files"][0].endswith("notes.docx")


def test_json_that_is_not_objects(prep, tmp_path):
    with pytest.raises(DataError):
        prep([write(tmp_path / "d.json", json.dumps([1, 2, 3]))])


def test_gb18030_csv_with_chinese_columns(prep, tmp_path):
    lines = ["问题,答案"] + [f"第{i}个问题是什么？,这是第{i}个答案，数值为{i * 3}。" for i in range(30)]
    src = write(tmp_path / "zh.csv", "\r\n".join(lines) + "\r\n", encoding="gb18030")
    r = prep([src])
    assert r.report["format"] == "prompt-completion" and r.report["kept_rows"] == 30
    assert any(m["content"].startswith("这是第") and "数值为" in m["content"] for row in r.train for m in row["messages"])


def test_csv_with_bom_and_quoted_newlines(prep, tmp_path):
    body = "question,answer\r\n" + "".join(f'"Line one {i}\nline two {i}?","Answer {i} spans\r\ntwo lines."\r\n'
                                           for i in range(20))
    src = write(tmp_path / "bom.csv", "\ufeff" + body)
    r = prep([src])
    assert r.report["kept_rows"] == 20
    row = (r.train + r.val + r.test)[0]
    assert "\n" in row["messages"][0]["content"]


def test_other_formats_are_detected(prep, tmp_path):
    share = [{"conversations": [{"from": "human", "value": f"Hi number {i}, how are things?"},
                                {"from": "gpt", "value": f"Fine, thanks {i}."}]} for i in range(20)]
    assert prep([write(tmp_path / "s.jsonl", "".join(json.dumps(x) + "\n" for x in share))]).report["format"] == "sharegpt"
    alpaca = [{"instruction": f"Translate item {i}", "input": f"text {i}", "output": f"译文 {i}"} for i in range(20)]
    r = prep([write(tmp_path / "a.json", json.dumps({"data": alpaca}))])
    assert r.report["format"] == "alpaca" and "text" in r.train[0]["messages"][0]["content"]
    txt = "\n\n".join(f"Paragraph {i} " + "words " * 50 for i in range(30))
    r = prep([write(tmp_path / "t.txt", txt)], split="1,0,0")
    assert r.report["format"] == "text"


def test_columns_override_and_errors(prep, tmp_path):
    rows = [{"q_col": f"Question {i} text?", "a_col": f"Answer {i}."} for i in range(20)]
    src = write(tmp_path / "c.jsonl", "".join(json.dumps(x) + "\n" for x in rows))
    assert prep([src], columns="prompt=q_col,response=a_col", dedup="exact").report["kept_rows"] == 20
    with pytest.raises(DataError, match="not in the data: nope"):
        prep([src], columns="prompt=nope,response=a_col")
    with pytest.raises(DataError, match="cannot tell"):
        prep([src])


def test_split_must_sum_to_one(prep, tmp_path):
    with pytest.raises(ConfigError, match="sum to 1"):
        prep([write(tmp_path / "d.jsonl", rows_jsonl(10))], split="0.8,0.3,0.1")


def test_very_long_line_is_rejected_not_fatal(prep, tmp_path):
    huge = json.dumps(chat("long?", "x" * 10_000_000))
    src = write(tmp_path / "d.jsonl", rows_jsonl(20) + huge + "\n")
    r = prep([src])
    assert r.report["rejected_by_reason"].get("too_long") == 1


def test_duplicates_and_leakage(prep, tmp_path):
    text = rows_jsonl(20) + rows_jsonl(3)  # three exact duplicates
    near = chat("Question number 5 about topic 65?", "Answer 5: value 35!")
    r = prep([write(tmp_path / "d.jsonl", text + json.dumps(near) + "\n")], max_rejected=0.2)
    assert r.report["exact_duplicates"] == 3 and r.report["near_duplicates"] == 1
    val = write(tmp_path / "val.jsonl", rows_jsonl(2, offset=0))
    r = prep([write(tmp_path / "d2.jsonl", rows_jsonl(20))], val=val, dedup="near")
    assert r.report["leakage_removed"] == 2 and r.report["splits"]["val"] == 2


def test_split_is_deterministic():
    rows = list(range(100))
    assert split_rows(rows, (0.8, 0.1, 0.1), 1) == split_rows(rows, (0.8, 0.1, 0.1), 1)
    assert split_rows(rows, (0.8, 0.1, 0.1), 1) != split_rows(rows, (0.8, 0.1, 0.1), 2)
    tr, va, te = split_rows(rows, (0.8, 0.1, 0.1), 1)
    assert (len(tr), len(va), len(te)) == (80, 10, 10) and sorted(tr + va + te) == rows


def test_cleaning_keeps_chat_text():
    assert C.clean("你好，世界！ＡＢＣ１２３ 10 m²") == "你好，世界！ＡＢＣ１２３ 10 m²"  # NFC by default: no meaning changed
    assert C.clean("你好，世界！ＡＢＣ１２３", "nfkc") == "你好，世界！ABC123"       # NFKC keeps CJK punctuation
    assert C.clean("a<br>b &amp; <b>c</b>\x00\u200b") == "a<br>b &amp; <b>c</b>"
    assert C.clean("a<br>b &amp; <b>c</b>\x00\u200b", strip_html=True) == "a\nb & c"
    assert C.clean("👨\u200d👩\u200d👧") == "👨\u200d👩\u200d👧"  # the zero-width joiner of emoji sequences stays
    assert C.clean("if a < b and c > d:\n    x = 1") == "if a < b and c > d:\n    x = 1"
    assert C.clean_text("Hello, World!") == "hello world"


def test_pii_masking():
    text, n = C.mask_pii("邮箱 a.b@example.com 手机 13812345678 身份证 11010519491231002X 卡 4111 1111 1111 1111")
    assert n == 4
    assert "[EMAIL]" in text and "[PHONE]" in text and "[ID]" in text and "[CARD]" in text
    text, n = C.mask_pii("订单号 110105194912310021")  # fails the ID check digit, not a Luhn card
    assert n == 0


def test_dedup_units():
    d = Deduplicator("near")
    assert d.check({"text": "The quick brown fox jumps over the lazy dog today"}, 1) == (None, None)
    assert d.check({"text": "the quick brown fox  jumps over the lazy dog today"}, 2) == ("duplicate", 1)
    assert d.check({"text": "The quick brown fox jumps over the lazy dog today!"}, 3) == ("near_duplicate", 1)
    assert d.check({"text": "The quick brown fox jumps over the lazy dog tonight"}, 4) == (None, None)
    assert find_leaks([{"text": "a completely different sentence"}, {"text": "hello there world"}],
                      [{"text": "hello there world"}]) == [(1, 0)]


def test_render_labels_only_assistant_tokens(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello there"}, {"role": "user", "content": "Bye"},
                        {"role": "assistant", "content": "Goodbye now"}]}
    r = render_row(row, tok, max_seq_len=512)
    trained = tok.decode([t for t, lab in zip(r.input_ids, r.labels) if lab != IGNORE])
    assert "Hello there" in trained and "Goodbye now" in trained
    assert "Hi" not in trained and "Bye" not in trained.replace("Goodbye", "") and "Be brief" not in trained
    assert "<|im_end|>" in trained
    short = render_row(row, tok, max_seq_len=10)
    assert short.truncated and len(short.input_ids) == 10


def test_marked_example_keeps_chinese_whole_and_marks_the_answer(tokenizer_dir):
    from transformers import AutoTokenizer

    from ownllm.data.render import marked_example

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    row = {"messages": [{"role": "user", "content": "订单 4 的取件码是多少？"},
                        {"role": "assistant", "content": "订单 4 的取件码是 1028。"}]}
    text = marked_example(render_row(row, tok, max_seq_len=512), tok)
    assert "\ufffd" not in text  # decoded token by token, each Chinese character came out as two �
    assert "订单 4 的取件码是多少？" in text and "⟦订单 4 的取件码是 1028。<|im_end|>" in text


def test_length_histogram_counts_every_row():
    from ownllm.data.report import length_histogram

    h = length_histogram([1, 5, 5, 39, 40, 300], max_seq_len=256, bins=20)
    assert sum(h["counts"]) == 6 and h["edges"][0] == 0 and h["edges"][-1] > 300 and h["truncated"] == 1
    assert h["counts"][0] == 3 and h["counts"][300 // 16] == 1  # bins 16 wide: 1, 5, 5 in the first


def test_parquet_and_in_memory_rows(prep, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": f"Parquet question {i} about {i * 11}?", "answer": f"Parquet answer {i}."} for i in range(20)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert prep([str(tmp_path / "d.parquet")]).report["kept_rows"] == 20
    from datasets import Dataset

    assert prep(Dataset.from_list(rows)).report["format"] == "prompt-completion"


def test_data_cli_inspect_and_prepare(tokenizer_dir, tmp_path):
    import subprocess
    import sys

    src = write(tmp_path / "d.jsonl", rows_jsonl(30))
    out = subprocess.run([sys.executable, "-m", "ownllm", "data", "inspect", src, "--model", tokenizer_dir],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "# Data report" in out.stdout
    assert not list(tmp_path.glob("**/report.json"))  # inspect writes nothing
    out = subprocess.run([sys.executable, "-m", "ownllm", "data", "prepare", src, "--model", tokenizer_dir,
                          "--out", str(tmp_path / "run"), "--split", "0.8,0.3,0.1"], capture_output=True, text=True)
    assert out.returncode == 2 and "sum to 1" in out.stderr and "Traceback" not in out.stderr
