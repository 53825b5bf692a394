"""Documents → data (`ownllm data from-docs`): readers, FAQ extraction, chunking, the teacher protocol
and its checks, the cache, and the split that holds facts out rather than rows."""
import importlib.util
import json
import os
import re

import pytest

from ownllm.data.documents import chunk_passages, document_text, read_document
from ownllm.data.faq import extract_pairs
from ownllm.errors import DataError

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "docs")


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """The sample documents, written afresh by the example script (so the script is tested too)."""
    out = tmp_path_factory.mktemp("docs")
    spec = importlib.util.spec_from_file_location("make_docs", os.path.join(EXAMPLES, "make_docs.py"))
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    make.main(str(out))
    return out


def _find(passages, text):
    return next(p for p in passages if p.text.startswith(text))


def test_pdf_reader_keeps_pages_headings_and_offsets(docs):
    passages = read_document(str(docs / "handbook.pdf"))
    warranty = _find(passages, "Every Aurelo H2 carries a 30-month")
    assert warranty.page == 1 and warranty.headings[-1] == "Warranty and service"
    reset = _find(passages, "Hold the pinhole button")
    assert reset.page == 2 and reset.kind == "paragraph"
    assert reset.headings[-2:] == ("Frequently asked questions", "How do I reset the Aurelo H2 to factory settings?")
    heading = _find(passages, "Frequently asked questions")
    assert heading.kind == "heading" and heading.level == 2
    # paragraphs are told apart by the gap between them; offsets point into the joined text
    assert _find(passages, "Place the hub at least").text.endswith("when it is ready.")
    text = "\n\n".join(p.text for p in passages)
    assert all(text[p.start:p.end] == p.text for p in passages)


def test_docx_html_markdown_and_gb18030_text_readers(docs, tmp_path):
    docx = read_document(str(docs / "handbook.docx"))
    table = next(p for p in docx if p.kind == "table")
    assert table.cells[0] == ["Question", "Answer"] and table.headings[-1] == "Quick facts"
    assert _find(docx, "Getting started").level == 2
    html = read_document(str(docs / "policy_zh.html"))
    assert not any("不是问题" in p.text or "首页" in p.text for p in html)  # script and nav are not text
    assert _find(html, "答：仓库验收后").headings[-1] == "常见问题"
    md = tmp_path / "notes.md"
    md.write_text("# Guide\n\n## Setup\n\nPlug it in.\n\n- first item\n\n| 问题 | 答案 |\n|---|---|\n| 几点开门？ | 九点。 |\n",
                  encoding="utf-8")
    m = read_document(str(md))
    assert [(p.kind, p.text) for p in m][:4] == [("heading", "Guide"), ("heading", "Setup"),
                                                  ("paragraph", "Plug it in."), ("item", "first item")]
    assert m[-1].cells == [["问题", "答案"], ["几点开门？", "九点。"]] and m[-1].headings == ("Guide", "Setup")
    txt = tmp_path / "faq.txt"
    txt.write_bytes("营业时间是几点？\n\n每天九点到十八点。\n".encode("gb18030"))
    pairs = extract_pairs(read_document(str(txt)))
    assert [(p.question, p.answer) for p in pairs] == [("营业时间是几点？", "每天九点到十八点。")]


def test_a_pdf_without_a_text_layer_says_so(tmp_path):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 100, style="F")  # a page that is only a picture, as a scan is
    pdf.output(str(tmp_path / "scan.pdf"))
    with pytest.raises(DataError, match="no text layer.*OCR"):
        read_document(str(tmp_path / "scan.pdf"))


def test_extraction_finds_every_faq_pair_in_english_and_chinese_and_nothing_else(docs):
    truth = json.loads((docs / "faq_truth.json").read_text(encoding="utf-8"))
    for name, expected in truth.items():
        found = [(p.question, p.answer) for p in extract_pairs(read_document(str(docs / name)))]
        assert sorted(found) == sorted((t["question"], t["answer"]) for t in expected), name


def test_chunks_end_at_sentences_fit_the_limit_overlap_and_are_deterministic(docs, tmp_path):
    measure = len  # one "token" per character: the limit is easy to check
    txt = tmp_path / "rules.txt"
    sentences = [f"第{n}条规定每人每天最多借{n}本书。" for n in range(1, 9)]  # 16 characters each
    txt.write_text("借阅规则\n\n" + "".join(sentences) + "\n", encoding="utf-8")
    chunks = chunk_passages(read_document(str(txt)), measure, limit=45, overlap=20)
    assert chunks == chunk_passages(read_document(str(txt)), measure, limit=45, overlap=20)
    assert all(c.tokens <= 45 and c.text.endswith("。") for c in chunks)
    body = [c.text.split("\n\n")[-1] for c in chunks]
    for before, after in zip(body, body[1:]):  # each chunk repeats the last sentence of the one before
        assert after.startswith(re.findall(r"第\d条[^。]*。", before)[-1])
    assert set(sentences) <= {s for b in body for s in re.findall(r"第\d条[^。]*。", b)}
    docx = chunk_passages(read_document(str(docs / "handbook.docx")), measure, limit=200, overlap=40)
    assert all(c.headings for c in docx)  # every chunk knows its section
    faq = [p for p in extract_pairs(read_document(str(docs / "handbook.docx"))) if p.how == "question_heading"]
    assert faq and all(any(f.question in c.text and f.answer in c.text for c in docx) for f in faq)  # together


# -- the teacher ------------------------------------------------------------------------------
def _passage(messages) -> str:
    asked = next(m["content"] for m in messages if m["role"] == "user")  # a retry adds turns after it
    return re.split(r"(?:Passage|段落)：?:?\n", asked, maxsplit=1)[-1]


def _fake_teacher_app(log: list, malformed_for: str = "Accidental damage", fail_first: int = 1):
    """An OpenAI-compatible endpoint whose replies are written to exercise every check: per chunk one
    grounded pair, one with a made-up quote, one whose answer the quote does not support; 429 on the
    first request; never JSON for the chunk containing ``malformed_for``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request):
        body = await request.json()
        log.append(body)
        if len(log) <= fail_first:
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "0"})
        text = _passage(body["messages"])
        if malformed_for in text:
            content = "Sure! Here are some questions about warranties: 1) what is covered"
        else:
            first = re.split(r"(?<=[.。!?！？])\s*", text.split("\n")[-1].strip())[0]
            topic = " ".join(first.split()[:6]) if " " in first else first[:12]
            content = json.dumps({"pairs": [
                {"questions": [f"What should I know about {topic}?", f"Explain {topic}, please."],
                 "answer": first, "quote": first},
                {"questions": [f"Can {topic} fly?"], "answer": "It can fly to the moon.",
                 "quote": "The hub can fly to the moon."},
                {"questions": [f"What does {topic} cost?"], "answer": "It costs 999 dollars.", "quote": first},
            ]}, ensure_ascii=False)
        return {"choices": [{"message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 50}}

    return app


def test_teacher_pairs_are_kept_only_when_grounded_and_the_cache_answers_a_rerun(docs, serving, tmp_path,
                                                                                 monkeypatch, tokenizer_dir):
    from ownllm.data.from_docs import docs_to_data
    from ownllm.data.synthesis import HttpTeacher, normalise

    monkeypatch.setenv("OWNLLM_HOME", str(tmp_path / "home"))
    log = []
    with serving(_fake_teacher_app(log)) as url:
        out = str(tmp_path / "docs.jsonl")
        teacher = HttpTeacher(url, model="fake", backoff=0.01)
        report = docs_to_data([str(docs / "handbook.docx")], out, client=teacher, progress=False, concurrency=2,
                              model=tokenizer_dir)
        t = report["teacher"]
        assert t["chunks"] >= 4 and t["proposed"] > 0
        # one chunk answers in prose twice (asked again once), counted and not fatal
        assert t["chunks_malformed"] == 1 and t["retries"] == 1
        assert t["rejected"]["quote_not_in_source"] == t["rejected"]["answer_not_supported"] == t["proposed"] // 3
        assert t["calls"] == t["chunks"] + 1 and len(log) == t["calls"] + 1  # + the 429, retried
        rows = [json.loads(line) for line in open(out, encoding="utf-8")]
        taught = [r for r in rows if r["origin"] == "teacher"]
        source = normalise(document_text(read_document(str(docs / "handbook.docx"))))
        assert taught and all(normalise(r["quote"]) in source for r in taught)  # every kept quote is in the document
        facts = {}
        for r in taught:
            facts.setdefault(r["fact"], []).append(r)
        assert all(len(v) == 2 for v in facts.values())  # two phrasings of each fact, one fact id
        assert "quote_not_in_source" in open(out.replace(".jsonl", ".report.md"), encoding="utf-8").read()

        calls = len(log)
        again = docs_to_data([str(docs / "handbook.docx")], out, client=HttpTeacher(url, model="fake"),
                             progress=False, model=tokenizer_dir)
        assert len(log) == calls and again["teacher"]["calls"] == 0  # the cache answered everything
        assert [json.loads(line) for line in open(out, encoding="utf-8")] == rows


def test_an_unreachable_teacher_is_one_clear_error(docs, tmp_path, tokenizer_dir):
    from ownllm.cli import main

    from ownllm.data.from_docs import docs_to_data
    from ownllm.data.synthesis import HttpTeacher, TeacherError

    with pytest.raises(TeacherError, match="unreachable"):
        docs_to_data([str(docs / "policy_zh.html")], str(tmp_path / "x.jsonl"), progress=False, cache=False,
                     client=HttpTeacher("http://127.0.0.1:9", model="m", retries=1, backoff=0.01), model=tokenizer_dir)
    assert main(["data", "from-docs", str(docs), "--out", str(tmp_path / "y.txt")]) == 2  # not .jsonl: a message


def test_the_protocol_against_a_real_ownllm_serve(docs, tiny, live_server, tmp_path, monkeypatch, tokenizer_dir):
    """The tiny random model writes no JSON: every chunk is asked twice, then one error names the problem and
    the documents' own FAQ rows and the report are still written."""
    from ownllm.data.from_docs import docs_to_data
    from ownllm.data.synthesis import HttpTeacher, TeacherError

    monkeypatch.setenv("OWNLLM_HOME", str(tmp_path / "home"))
    out = str(tmp_path / "zh.jsonl")
    with live_server(tiny) as (url, _):
        with pytest.raises(TeacherError, match="nothing usable"):
            docs_to_data([str(docs / "policy_zh.html")], out, client=HttpTeacher(url), progress=False,
                         max_tokens=16, chunk_tokens=120, model=tokenizer_dir)
    report = json.load(open(out.replace(".jsonl", ".report.json"), encoding="utf-8"))
    t = report["teacher"]
    assert t["teacher"].endswith("|") and t["calls"] == 2 * t["chunks"] and t["completion_tokens"] > 0
    assert len(open(out, encoding="utf-8").readlines()) == 7  # the FAQ the page states


# -- the split ---------------------------------------------------------------------------------
def test_prepare_holds_facts_out_not_rows_and_keeps_provenance(prep):
    rows = []
    for f in range(12):
        for k in range(3):
            rows.append({"messages": [{"role": "user", "content": f"Question {k} number {f} about item {f * 7}?"},
                                      {"role": "assistant", "content": f"Item {f * 7} answer {f}."}],
                         "fact": f"fact{f}", "source": f"manual.pdf p. {f}"})
    pinned = {"messages": [{"role": "user", "content": "Where is the manual?"},
                           {"role": "assistant", "content": "On the Lumora website."}], "split": "train"}
    rows.append(pinned)
    result = prep(rows, split="0.8,0.1,0.1")
    held = result.val + result.test
    assert len(result.val) == len(result.test) == 4 and all(r["fact"] and r["source"].startswith("manual.pdf") for r in held)
    train_facts = [r.get("fact") for r in result.train]
    for r in held:  # one phrasing held out; the fact's other phrasings train
        assert train_facts.count(r["fact"]) == 2 and r not in result.train
    assert len({r["fact"] for r in held}) == len(held)
    assert pinned in result.train


def test_a_docx_that_unzips_to_gigabytes_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A DOCX is a zip whose parts python-docx reads whole: a small file can expand past memory. Its parts'
    real sizes are counted while reading (its directory can lie), and past the limit it is refused."""
    import zipfile

    from ownllm.data import documents
    from ownllm.errors import DataError

    monkeypatch.setattr(documents, "DOCX_MAX_UNZIPPED", 1 << 20)
    bomb = tmp_path / "bomb.docx"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", b"<w:document/>" + b" " * (3 << 20))  # 3 MB of spaces, ~3 KB zipped
    assert bomb.stat().st_size < 64 << 10
    called = []
    monkeypatch.setattr("docx.Document", lambda path: called.append(path))
    with pytest.raises(DataError, match="expands to more than 1 MB when unzipped"):
        documents.read_document(str(bomb))
    assert not called  # python-docx never opened it


# -- grounding checks with teeth ------------------------------------------------------------------
@pytest.mark.parametrize("answer, quote, grounded", [
    ("Returns are accepted within 3 days.", "Returns are accepted within 30 days.", False),
    ("Returns are accepted within 30 days.", "Returns are accepted within 30 days of delivery.", True),
    ("Call 555-1234.", "Call our desk at 555-12345 any time.", False),
    ("It costs 1,000 yuan.", "The fee is 1000 yuan per year.", True),
    ("The store is open on Sundays.", "The store is not open on Sundays.", False),
    ("The store is not open on Sundays.", "The store is open on Sundays and holidays.", False),
    ("The store does not open on Sundays.", "We don't open the store on Sundays.", True),
    ("The warranty covers accidental damage.", "The warranty does not cover accidental damage.", False),
    ("Orders ship in 2 days.", "We do not ship abroad; orders ship in 2 days.", True),
    ("周日开门。", "我们周日不开门。", False),
    ("周日不开门。", "我们周日开门，营业到晚上八点。", False),
    ("周日不开门。", "我们周日不开门，周一到周六营业。", True),
    ("退货期限是三天。", "退货期限是三十天。", False),
    ("退货期限是三十天。", "自收货起，退货期限是三十天。", True),
    ("客服电话是12345。", "客服电话是123456，全天有人接听。", False),
    ("一般需要一个工作日。", "通常需要一个工作日处理。", True),
])
def test_an_answer_is_grounded_only_by_its_own_numbers_and_negations(answer, quote, grounded):
    from ownllm.data.synthesis import supported

    assert supported(answer, quote) is grounded


def test_a_quote_too_short_to_check_against_is_rejected():
    from ownllm.data.documents import Chunk
    from ownllm.data.synthesis import check_pair

    chunk = Chunk(file="f.md", text="Opens at 9. The desk opens at 9 am on weekdays. 周日不开门。我们周一到周六营业。",
                  headings=(), pages=(), start=0, end=60, tokens=40)
    pair = {"questions": ["When does the desk open?"], "answer": "At 9."}
    assert check_pair(dict(pair, quote="Opens at 9."), chunk) == "quote_too_short"
    assert check_pair(dict(pair, quote="The desk opens at 9 am on weekdays."), chunk) is None
    zh = {"questions": ["周日营业吗？"], "answer": "周日不开门。"}
    assert check_pair(dict(zh, quote="周日不开门。"), chunk) == "quote_too_short"
    assert check_pair(dict(zh, quote="我们周一到周六营业。"), chunk) == "answer_not_supported"


def test_a_pair_the_judge_rejects_does_not_block_a_later_phrasing(tmp_path, monkeypatch, tokenizer_dir):
    """The duplicate-question index only holds pairs that were kept: a rejected pair's question used to
    block the same question asked again with a good answer."""
    from ownllm.data.from_docs import docs_to_data

    monkeypatch.setenv("OWNLLM_HOME", str(tmp_path / "home"))
    doc = tmp_path / "desk.md"
    doc.write_text("# Opening hours\n\nThe support desk opens at 9 am on weekdays and is closed on Sundays.\n",
                   encoding="utf-8")
    quote = "The support desk opens at 9 am on weekdays and is closed on Sundays."

    class Teacher:
        id = "fake-judge"

        def complete(self, messages, max_tokens):
            asked = messages[-1]["content"]
            if asked.startswith("Score this"):
                return json.dumps({"score": 2 if "whenever" in asked else 9, "reason": "-"}), {}
            return json.dumps({"pairs": [
                {"questions": ["When does the support desk open?"], "answer": "It opens at 9 am, whenever.",
                 "quote": quote},
                {"questions": ["When does the support desk open?", "What time does the desk open on weekdays?"],
                 "answer": "The support desk opens at 9 am on weekdays.", "quote": quote}]}), {}

    out = str(tmp_path / "desk.jsonl")
    report = docs_to_data([str(doc)], out, client=Teacher(), teacher="fake", judge=True, progress=False, model=tokenizer_dir)
    t = report["teacher"]
    assert t["rejected"] == {"judge_below_threshold": 1} and t["kept"] == 1
    rows = [json.loads(line) for line in open(out, encoding="utf-8") if '"teacher"' in line]
    assert {r["messages"][0]["content"] for r in rows} == {"When does the support desk open?",
                                                           "What time does the desk open on weekdays?"}
    assert all("whenever" not in r["messages"][1]["content"] for r in rows)
