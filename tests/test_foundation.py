import os
import subprocess
import sys

import pytest

import ownllm
from ownllm.errors import ConfigError, ModelNotFoundError
from ownllm.models import registry
from ownllm.models.load import load_model, resolve


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ownllm", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_help_imports_no_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "ownllm", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "quickstart" in out.stdout
    imported = [line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time")]
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]
    assert "transformers" not in imported


def test_registry_lookup_and_suggestions():
    assert registry.lookup("deepseek/base-7b").hub_id == "deepseek-ai/deepseek-llm-7b-base"
    assert registry.lookup("Qwen/Qwen2.5-7B-Instruct").alias == "qwen2.5-7b"
    assert registry.lookup("smollm2").embedded
    assert "smollm2-135m" in registry.suggest("smolm2-135m")
    assert all(s.params > 0 and s.layers > 0 and s.vocab > 0 for s in registry.MODELS.values())


def test_models_command_lists_embedded_model():
    out = run_cli("models")
    assert out.returncode == 0
    assert "smollm2-135m" in out.stdout and "yes (embedded)" in out.stdout and "deepseek/base-7b" in out.stdout


def test_resolve_errors_are_clear(tmp_path):
    with pytest.raises(ModelNotFoundError, match="did you mean smollm2-135m"):
        resolve("smolm2-135m")
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve(str(tmp_path / "nope" / "model.gguf"))
    with pytest.raises(ModelNotFoundError, match="folder not found"):
        resolve("./no/such/folder")
    assert resolve("someorg/some-model").kind == "hub"


def test_pickle_weights_refused_unless_allowed(tiny_model_dir, tmp_path):
    import shutil

    import torch

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    from safetensors.torch import load_file

    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    os.remove(folder / "model.safetensors")
    with pytest.raises(ModelNotFoundError, match="pickle"):
        load_model(str(folder))
    assert load_model(str(folder), allow_pickle=True).num_parameters() > 0


def test_hub_id_offline_names_the_cache(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as e:
        load_model("qwen2.5-0.5b")
    assert "cache" in str(e.value) and "smollm2-135m" in str(e.value)


def test_generation_parameters(tiny_model_dir):
    m = load_model(tiny_model_dir)
    greedy = m.generate("Hello", max_new_tokens=8, temperature=0)
    assert greedy == m.generate("Hello", max_new_tokens=8, temperature=0)
    assert "".join(m.stream("Hello", max_new_tokens=8, temperature=0)) == greedy
    a = m.generate("Hello", max_new_tokens=8, temperature=1.0, top_p=0.9, top_k=20, seed=3)
    assert a == m.generate("Hello", max_new_tokens=8, temperature=1.0, top_p=0.9, top_k=20, seed=3)
    n = len(m.tokenizer("Hello", add_special_tokens=False)["input_ids"])
    out = m.generate("Hello", max_length=n + 5, temperature=0, raw=True)
    assert len(m.tokenizer(out, add_special_tokens=False)["input_ids"]) <= 6
    assert isinstance(m.chat([{"role": "user", "content": "hi"}], max_new_tokens=4, repetition_penalty=1.2), str)


def test_stop_strings_cut_the_answer(tiny_model_dir):
    m = load_model(tiny_model_dir)
    full = m.generate("Hello", max_new_tokens=12, temperature=1.0, top_k=0, top_p=1.0, seed=5, repetition_penalty=1.0)
    starts = [i for i in range(1, len(full) - 2) if full.find(full[i:i + 2]) == i and full[i:i + 2].strip()]
    assert starts, f"the tiny model's output is too repetitive for this test: {full!r}"
    if starts:
        stop = full[starts[0]:starts[0] + 2]
        cut = m.generate("Hello", max_new_tokens=12, temperature=1.0, top_k=0, top_p=1.0, seed=5, repetition_penalty=1.0, stop=stop)
        assert cut == full[:full.find(stop)]
        assert "".join(m.stream("Hello", max_new_tokens=12, temperature=1.0, top_k=0, top_p=1.0, seed=5, repetition_penalty=1.0, stop=[stop])) == cut


def test_bad_generation_values_are_all_reported(tiny_model_dir):
    m = load_model(tiny_model_dir)
    with pytest.raises(ConfigError) as e:
        m.generate("x", temperature=3, top_p=0, max_new_tokens=0)
    text = str(e.value)
    assert "temperature" in text and "top_p" in text and "max_new_tokens" in text


def test_cli_error_has_no_traceback():
    out = run_cli("generate", "no-such-model", "hi")
    assert out.returncode == 2
    assert "error: unknown model 'no-such-model'" in out.stderr and "Traceback" not in out.stderr


def test_cli_generate_with_tiny_model(tiny_model_dir):
    # seeded sampling (the random tiny model's greedy answer is blank lines): the CLI prints what the API draws
    settings = dict(max_new_tokens=5, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=3)
    flags = [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    out = run_cli("generate", tiny_model_dir, "Once upon a time", *flags)
    assert out.returncode == 0, out.stderr
    expected = load_model(tiny_model_dir).generate("Once upon a time", **settings)
    assert expected.strip() and out.stdout.strip() == expected.strip()


def test_generate_dtype_flag(tiny_model_dir):
    from ownllm.device import cpu_has_fast_bf16

    out = run_cli("generate", tiny_model_dir, "hi", "--device", "cpu", "--dtype", "fp16", "--max-new-tokens", "2")
    assert out.returncode == 2 and "fp16" in out.stderr and "Traceback" not in out.stderr
    if cpu_has_fast_bf16():
        import torch

        assert load_model(tiny_model_dir, device="cpu", dtype="bf16").model.dtype == torch.bfloat16
        out = run_cli("generate", tiny_model_dir, "hi", "--dtype", "bf16", "--max-new-tokens", "2", "--temperature", "0")
        assert out.returncode == 0, out.stderr


def test_doctor_reports_this_machine():
    out = run_cli("doctor")
    assert out.returncode == 0, out.stderr
    for word in ("python", "torch", "cpu", "ram", "disk", "transformers", "can train"):
        assert word in out.stdout


def test_precision_choice_on_cpu():
    from ownllm.errors import HardwareError
    from ownllm import device as hardware

    assert hardware.cpu_has_fast_bf16({"avx2"}) is False
    assert hardware.cpu_has_fast_bf16({"avx2", "avx512_bf16"}) is True
    expected = "bf16" if hardware.cpu_has_fast_bf16() else "fp32"
    assert hardware.resolve_precision("auto", "cpu") == expected
    with pytest.raises(HardwareError, match="needs a GPU"):
        hardware.resolve_precision("fp16", "cpu")


def test_public_api_is_lazy():
    assert {"load_model", "Trainer", "clean_text", "prepare_dataset", "evaluate"} <= set(dir(ownllm))
    code = ("import sys, ownllm\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'ownllm.models.load') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "ownllm.load_model, ownllm.Trainer\n"
            "assert 'ownllm.models.load' in sys.modules and 'ownllm.training.trainer' in sys.modules\n"
            "assert ownllm.load_model is sys.modules['ownllm.models.load'].load_model\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_chat_repl_answers_and_handles_commands(tiny_model_dir):
    proc = subprocess.run([sys.executable, "-m", "ownllm", "chat", tiny_model_dir, "--max-new-tokens", "4",
                           "--temperature", "0"], input="你好\n/system 你是一个专业的医疗问诊助手\n/reset\nhello\n/exit\n",
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model> ") == 2
    assert "system prompt set" in proc.stdout and "conversation cleared" in proc.stdout
    assert proc.stdout.startswith("engine: ")  # which engine answers, and why


def test_answer_cut_inside_a_chinese_character_drops_the_half(tiny_model_dir, monkeypatch):
    import torch

    m = load_model(tiny_model_dir, device="cpu")
    first_half = m.tokenizer("你", add_special_tokens=False)["input_ids"][:1]  # byte-level BPE: 你 is two tokens
    assert m.tokenizer.decode(first_half).endswith("\ufffd")

    def fake_generate(input_ids, streamer=None, **kwargs):  # the token limit hit after "好" and half of "你"
        new = torch.tensor([m.tokenizer("好", add_special_tokens=False)["input_ids"] + first_half])
        if streamer is not None:
            streamer.put(input_ids)
            streamer.put(new)
            streamer.end()
        return torch.cat([input_ids, new], 1)

    monkeypatch.setattr(m.model, "generate", fake_generate)
    assert m.generate("hi", max_new_tokens=3) == "好"
    assert "".join(m.stream("hi", max_new_tokens=3)) == "好"


def test_bitsandbytes_hub_kernel_warning_is_held_back_and_explained_where_4bit_is_used(capsys, monkeypatch):
    """bitsandbytes' "could not verify publisher trust status" warning (logged when peft imports it on
    an AVX512-BF16 CPU offline) never reaches the person; 4-bit use says what it means, once."""
    import logging

    import ownllm
    from ownllm.errors import explain_cpu_4bit_kernel

    pytest.importorskip("bitsandbytes")
    logger, records = logging.getLogger("bitsandbytes.backends.cpu.ops"), []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "Kernel repository "
                       "'kernels-community/quantization-bitsandbytes' could not verify publisher trust status")
        logger.warning("another warning")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["another warning"]
    assert ownllm._HubKernelNotice.seen
    monkeypatch.setattr(explain_cpu_4bit_kernel, "said", False, raising=False)  # said once per process: maybe already
    explain_cpu_4bit_kernel()
    explain_cpu_4bit_kernel()
    err = capsys.readouterr().err
    assert err.count("built-in CPU kernel for 4-bit weights") == 1 and "trust" not in err


def test_importing_peft_through_ownllm_prints_no_hub_kernel_warning():
    proc = subprocess.run([sys.executable, "-c", "import ownllm, peft, ownllm.training.train"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "kernels-community" not in proc.stderr and "trust" not in proc.stderr
