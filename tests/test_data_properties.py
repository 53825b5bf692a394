"""Property-based checks of the data doctor: random files of every supported format and encoding
(long lines, empty lines, BOMs, mixed newlines, duplicate rows and chunks) never end in a traceback,
every row read is accounted for as kept or rejected with a reason, and the input is never changed."""
import csv
import hashlib
import io
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ownllm.data.prepare import prepare_dataset
from ownllm.errors import OwnLLMError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Latin, digits, Chinese, punctuation of both, quotes and separators that CSV and JSON must escape.
ALPHABET = st.sampled_from(list("abcxyzABC019 ,.;:!?'\"\t-_/\\") + list("的一是在了人有中，。！？；「」数据模型") +
                           ["\u00e9", "\u00df", "\U0001F600", "\ufeff", "\u200b"])
TEXT = st.text(ALPHABET, min_size=0, max_size=40)
# A long run of one sentence: a paragraph that becomes several chunks of one line (the README crash).
LONG = st.builds(lambda s, n: (s + " ") * n, st.text(ALPHABET, min_size=5, max_size=30), st.integers(80, 300))
FIELD = st.one_of(TEXT, TEXT, LONG)
ROWS = st.lists(st.tuples(FIELD, FIELD), min_size=0, max_size=12).flatmap(
    lambda rows: st.lists(st.sampled_from(rows), max_size=4).map(lambda dups: rows + dups) if rows else st.just(rows))
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "gb18030"])
NEWLINES = st.sampled_from(["\n", "\r\n", "mixed"])


def _join(lines: list[str], newline: str) -> str:
    if newline != "mixed":
        return newline.join(lines) + newline
    return "".join(line + ("\r\n" if i % 2 else "\n") for i, line in enumerate(lines))


def _text_of(fmt: str, rows: list, blank_every: int, newline: str) -> str:
    if fmt == "jsonl":
        lines = [json.dumps({"prompt": q, "response": a}, ensure_ascii=False) for q, a in rows]
        if blank_every:  # empty lines between rows are allowed and skipped
            lines = [x for i, line in enumerate(lines) for x in ([line, ""] if i % blank_every == 0 else [line])]
        return _join(lines, newline)
    if fmt == "json":
        return json.dumps([{"instruction": q, "output": a} for q, a in rows], ensure_ascii=False, indent=1)
    if fmt in ("csv", "tsv"):
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="," if fmt == "csv" else "\t",
                       lineterminator="\r\n" if newline == "\r\n" else "\n")
        w.writerow(["question", "answer"])
        w.writerows(rows)
        return buf.getvalue()
    # txt / md: each row a paragraph (question, then answer), blank lines between, some doubled
    paras = [f"{q}\n{a}".strip() for q, a in rows]
    lines = []
    for i, p in enumerate(paras):
        lines += [p, ""] + ([""] if blank_every and i % blank_every == 0 else [])
    return _join(lines, newline)


def _encode(text: str, encoding: str) -> bytes:
    return text.encode(encoding, errors="replace")


def _check(path: str, tmp_path) -> None:
    before = open(path, "rb").read()
    stat = os.stat(path)
    try:
        result = prepare_dataset(path, max_rejected=1.0, max_seq_len=64)
    except OwnLLMError as e:  # a clear message (no rows, nothing left for training…), never a traceback
        assert e.message
    else:
        r = result.report
        assert r["total_rows"] == r["kept_rows"] + r["rejected_rows"], r
        assert r["kept_rows"] == len(result.train) + len(result.val) + len(result.test)
        assert all(x["reason"] and x["source"] and x["line"] >= 1 for x in result.rejected)
    assert open(path, "rb").read() == before
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]  # inspect writes nothing


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(fmt=st.sampled_from(["jsonl", "json", "csv", "tsv", "txt", "md"]), rows=ROWS, encoding=ENCODINGS,
       newline=NEWLINES, blank_every=st.integers(0, 3))
def test_random_files_never_crash_and_every_row_is_accounted_for(tmp_path_factory, fmt, rows, encoding,
                                                                 newline, blank_every):
    tmp = tmp_path_factory.mktemp("in")
    path = str(tmp / f"data.{fmt}")
    with open(path, "wb") as f:
        f.write(_encode(_text_of(fmt, rows, blank_every, newline), encoding))
    _check(path, tmp)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS)
def test_random_parquet_files(tmp_path_factory, rows):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    tmp = tmp_path_factory.mktemp("in")
    path = str(tmp / "data.parquet")
    pq.write_table(pa.table({"question": [q for q, _ in rows], "answer": [a for _, a in rows]}), path)
    _check(path, tmp)


def test_a_paragraph_cut_into_several_chunks_of_one_line(tmp_path):
    """`ownllm data inspect README.md` crashed: two chunks of one line had one key in the
    near-duplicate index. Now each chunk is its own row, and near-identical chunks are reported
    against the part they repeat."""
    sentence = "The support desk opens at nine and closes at five on weekdays. "
    path = tmp_path / "notes.md"
    path.write_text(sentence * 400 + "\n\nA different paragraph about refunds within thirty days.\n",
                    encoding="utf-8")
    result = prepare_dataset(str(path), max_rejected=1.0)
    r = result.report
    assert r["total_rows"] == r["kept_rows"] + r["rejected_rows"] and r["total_rows"] > 2
    dups = [x for x in result.rejected if x["reason"] in ("duplicate", "near_duplicate")]
    assert dups and all(x["line"] == 1 and x["detail"] == f"same as {path}:1" for x in dups)


def test_the_projects_own_readme(tmp_path):
    readme = os.path.join(ROOT, "README.md")
    digest = hashlib.sha256(open(readme, "rb").read()).hexdigest()
    result = prepare_dataset(readme, max_rejected=1.0)
    assert result.report["total_rows"] == result.report["kept_rows"] + result.report["rejected_rows"]
    assert hashlib.sha256(open(readme, "rb").read()).hexdigest() == digest
