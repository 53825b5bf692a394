"""Marked tests on the real embedded model (SmolLM2-135M): run with `make test-slow`."""
import json

import pytest

pytestmark = pytest.mark.slow


def test_embedded_model_answers_paris():
    import ownllm as deepseek

    answer = deepseek.load_model("smollm2-135m").generate(
        "Question: What is the capital of France?\nAnswer:", max_length=30, temperature=0)
    assert "Paris" in answer


def test_guide_quantizer_snippet_keeps_the_answer():
    pytest.importorskip("bitsandbytes")
    from ownllm import Quantizer

    quantized_model = Quantizer(model="smollm2-135m", bits=4).quantize()
    assert quantized_model.report["size_change"] < -0.5
    assert "Paris" in quantized_model.generate("What is the capital of France?", max_new_tokens=20, temperature=0)


def test_embedded_model_exports_keep_the_answer(tmp_path):
    """ONNX greedy text equals torch's; q4_0 GGUF stays within its documented perplexity tolerance
    and still answers the question."""
    import torch
    from transformers import AutoModelForCausalLM

    from ownllm.export.export import GGUF_PERPLEXITY_TOLERANCE, export
    from ownllm.models.load import load_model

    question = "What is the capital of France?"
    reference = load_model("smollm2-135m", device="cpu")
    expected = reference.generate(question, temperature=0, max_new_tokens=20)
    assert "Paris" in expected

    export("smollm2-135m", "onnx", str(tmp_path / "onnx"))
    assert load_model(str(tmp_path / "onnx" / "model.onnx")).generate(question, temperature=0,
                                                                       max_new_tokens=20) == expected

    m = export("smollm2-135m", "gguf", str(tmp_path / "gguf"), quant="q4_0")
    ppl = next(c for c in m["checks"] if "perplexity" in c["name"])
    assert m["all_checks_passed"] and ppl["measured"] <= GGUF_PERPLEXITY_TOLERANCE["q4_0"]
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "gguf"), gguf_file="smollm2-135m-q4_0.gguf",
                                                 dtype=torch.float32)
    from ownllm.models.generation import OwnModel

    answer = OwnModel(model, reference.tokenizer).generate(question, temperature=0, max_new_tokens=20)
    assert "Paris" in answer


def test_studio_flow_on_the_embedded_model(tmp_path):
    """The page's calls on the default model and the sample data: prepare, plan, train, stop, resume,
    evaluate, ask both models, export — each a real job, as a person would run them."""
    import time

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from ownllm.studio.app import Studio, create_app

    client = TestClient(create_app(Studio(str(tmp_path / "runs"))), base_url="http://127.0.0.1")

    def settled(key):
        end = time.time() + 900
        while time.time() < end:
            view = client.get("/api/runs/support").json()
            state = view["training"]["state"] if key == "training" else (view[key] or {}).get("state")
            if state != "running":
                return view
            time.sleep(2)
        raise AssertionError(f"{key} still running")

    r = client.post("/api/runs", json={"name": "support", "inputs": ["examples/data/support_en.jsonl"]})
    assert r.status_code == 200, r.text
    plan = client.post("/api/runs/support/plan", json={"model": "smollm2-135m", "time_budget": "3h"}).json()
    assert plan["fits_in_memory"] and plan["fits_in_budget"] and plan["epochs"] == 10  # 144 rows: small-data defaults
    assert client.post("/api/runs/support/train", json={"model": "smollm2-135m", "time_budget": "3h", "max_steps": 30,
                                                        "logging_steps": 2, "save_steps": 10}).status_code == 200
    end = time.time() + 600
    while len(client.get("/api/runs/support/metrics").json()["rows"]) < 2 and time.time() < end:
        time.sleep(1)
    assert client.post("/api/runs/support/stop").status_code == 200
    t = settled("training")["training"]
    assert t["state"] == "stopped" and t["resumable"], t
    assert client.post("/api/runs/support/resume").status_code == 200
    t = settled("training")["training"]
    assert t["state"] == "finished" and t["summary"]["global_step"] == 30, t
    # validated every 10 steps, across the stop and the resume, and still falling at the end
    evals = {r["step"]: r["eval_loss"] for r in map(json.loads, open(tmp_path / "runs" / "support" / "metrics.jsonl"))
             if "eval_loss" in r}
    assert sorted(evals) == [10, 20, 30] and evals[30] < evals[20] < evals[10], evals
    assert client.post("/api/runs/support/eval", json={"max_samples": 6}).status_code == 200
    e = settled("eval_job")["eval"]
    assert e["tuned"]["test_loss"] < 0.5 * e["base"]["test_loss"], e["headline"]
    answers = client.post("/api/runs/support/chat", json={"message": "How do I reset my Lumora router?"}).json()
    assert answers["tuned"] and answers["base"] and answers["tuned"] != answers["base"]
    assert client.post("/api/runs/support/export", json={"format": "merged"}).status_code == 200
    view = settled("export_job")
    assert view["export_job"]["state"] == "done" and view["exports"][0]["manifest"]["all_checks_passed"]


def test_documents_to_an_evaluated_run_with_the_embedded_model_as_teacher(tmp_path, serving):
    """The whole documents path: the embedded model as teacher behind `serve` (torch engine, batched), every
    kept pair grounded in the document, then prepare → a short training → the report card."""
    from ownllm.data.documents import document_text, read_document
    from ownllm.data.from_docs import docs_to_data
    from ownllm.data.prepare import prepare_dataset
    from ownllm.data.synthesis import HttpTeacher, TeacherError, normalise
    from ownllm.evaluation.evaluate import evaluate
    from ownllm.serving.app import ServeSettings, create_app
    from ownllm.serving.engines import load_engine
    from ownllm.training.trainer import Trainer

    doc = "examples/docs/handbook.docx"
    out = str(tmp_path / "docs.jsonl")
    model, _ = load_engine("smollm2-135m", "torch", dtype="fp32")
    with serving(create_app(model, ServeSettings(model_id="smollm2-135m", request_timeout=900))) as url:
        try:
            report = docs_to_data([doc], out, client=HttpTeacher(url), progress=False, max_tokens=384, per_chunk=2,
                                   cache=False)
        except TeacherError as e:  # nothing usable from a 135M teacher is a possible, named outcome
            assert "nothing usable" in str(e)
            report = json.load(open(out.replace(".jsonl", ".report.json"), encoding="utf-8"))
    t = report["teacher"]
    assert t["calls"] >= t["chunks"] > 0 and t["completion_tokens"] > 0 and t["proposed"] >= t["kept"]
    rows = [json.loads(line) for line in open(out, encoding="utf-8")]
    source = normalise(document_text(read_document(doc)))
    taught = [r for r in rows if r["origin"] == "teacher"]
    assert len(taught) == t["kept_rows"] and all(normalise(r["quote"]) in source for r in taught)
    assert t["proposed"] == t["kept"] + sum(t["rejected"].values())  # every proposed pair kept or rejected, with why
    # a 135M teacher may keep nothing: the checks are then shown to work on this document's own chunks
    from ownllm.data.documents import chunk_passages
    from ownllm.data.synthesis import check_pair

    chunk = max(chunk_passages(read_document(doc), len, limit=1200), key=lambda c: len(c.text))
    sentence = max((s.strip() for s in chunk.text.replace("\n", " ").split(". ")), key=len)
    grounded = {"questions": ["What does the handbook say about this?"], "answer": sentence, "quote": sentence}
    assert check_pair(grounded, chunk) is None
    assert check_pair(dict(grounded, quote="The device can fly to the moon."), chunk) == "quote_not_in_source"
    assert check_pair(dict(grounded, answer=sentence + " It costs 999 dollars."), chunk) == "answer_not_supported"
    assert sum(r["origin"] == "document" for r in rows) == 11  # the handbook's own FAQ

    run = str(tmp_path / "run")
    prepare_dataset([out], run)
    Trainer(model="smollm2-135m", train_dataset=run,
            args={"output_dir": run, "max_steps": 20, "eval_steps": 10, "protect": "off"}).train()
    result = evaluate(run, max_samples=4)
    assert "contains" in result["tuned"] and "headline" in result
