"""The package's layout rules, read from the source with ``ast``; and the arithmetic every part shares."""
import ast
import json
import os
import random
import string
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "ownllm")


def _modules() -> dict[str, str]:
    mods = {}
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = "ownllm." + os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(mods: dict[str, str]):
    """Every import anywhere in each module (inside functions too): (module, imported module, name or None)."""
    for mod, path in mods.items():
        is_pkg = path.endswith("__init__.py")
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Import):
                for a in node.names:
                    yield mod, a.name, None
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = mod.split(".")[: len(mod.split(".")) - node.level + is_pkg]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    yield mod, (full if full in mods else base), (None if full in mods else a.name)


def _owner(target: str, mods: dict[str, str]) -> str | None:
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target or None


def _package(mod: str) -> str:
    """ownllm.training.loop -> ownllm.training; top-level modules (ownllm.utils) are their own package."""
    parts = mod.split(".")
    return ".".join(parts[:2])


def test_no_import_circles_and_no_private_names_across_packages():
    mods = _modules()
    graph, private, cli_users = {m: set() for m in mods}, [], []
    for mod, target, name in _imports(mods):
        owner = _owner(target, mods) if target.startswith("ownllm") else None
        if owner is None:
            continue
        if owner != mod:
            graph[mod].add(owner)
        if name and name.startswith("_") and not name.startswith("__") and _package(owner) != _package(mod):
            private.append(f"{mod} imports {name} from {owner}")
        if _package(owner) == "ownllm.cli" and _package(mod) != "ownllm.cli" and mod != "ownllm.__main__":
            cli_users.append(f"{mod} imports {owner}")
    assert not private, private
    assert not cli_users, cli_users  # the library never depends on the command layer

    # Tarjan's strongly connected components: any component of two or more modules is a circle
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, circles


DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "architecture.md")


def _floors() -> dict[str, int]:
    """Package -> floor number (0 is the ground), from the ```floors block of docs/architecture.md (top floor
    first, one floor a line)."""
    text = open(DOCS, encoding="utf-8").read()
    block = text.split("```floors\n", 1)[1].split("```", 1)[0]
    lines = [line.split() for line in block.strip().splitlines()]
    return {("ownllm" if name == "ownllm" else f"ownllm.{name}"): len(lines) - 1 - i
            for i, names in enumerate(lines) for name in names}


def test_packages_import_only_their_floor_or_below():
    mods, floors = _modules(), _floors()
    unplaced = sorted({_package(m) for m in mods} - set(floors))
    assert not unplaced, f"packages on no floor of docs/architecture.md: {unplaced}"
    upward = []
    for mod, target, name in _imports(mods):
        owner = _owner(target, mods) if target.startswith("ownllm") else None
        if owner is None:
            continue
        a, b = _package(mod), _package(owner)
        if floors[b] > floors[a]:
            upward.append(f"{mod} imports {owner}{'.' + name if name else ''} ({a} floor {floors[a]} < {b} floor {floors[b]})")
    assert not upward, upward


def test_the_floor_checker_sees_an_upward_import(tmp_path, monkeypatch):
    pkg = tmp_path / "ownllm"
    for p in (pkg, pkg / "models", pkg / "training"):
        p.mkdir(parents=True, exist_ok=True)
        (p / "__init__.py").write_text("")
    (pkg / "models" / "load.py").write_text("def f():\n    from ownllm.training.loop import g\n")
    (pkg / "training" / "loop.py").write_text("def g():\n    pass\n")
    docs = tmp_path / "architecture.md"
    docs.write_text("```floors\ntraining\nmodels\nownllm\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(pkg))
    monkeypatch.setattr(sys.modules[__name__], "DOCS", str(docs))
    with pytest.raises(AssertionError, match=r"ownllm\.models\.load imports ownllm\.training\.loop"):
        test_packages_import_only_their_floor_or_below()
    (pkg / "models" / "load.py").write_text("def f():\n    pass\n")
    test_packages_import_only_their_floor_or_below()


RUN_LAYOUT = {"config.yaml", "data", "plan.json", "checkpoints", "adapter", "model", "tensorboard", "metrics.jsonl",
              "loss.png", "train_summary.json", "status.json", "eval", "export", "stages", "studio", "train.jsonl",
              "val.jsonl", "test.jsonl", "report.json", "rejected.jsonl"}


def _run_paths_joined(mods: dict[str, str]) -> list[str]:
    """os.path.join calls outside rundir.py naming an entry of a run directory's layout."""
    found = []
    for mod, path in mods.items():
        if mod == "ownllm.rundir":
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "os.path.join":
                names = {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
                if names & RUN_LAYOUT:
                    found.append(f"{mod}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_run_directory_path_is_joined_outside_rundir():
    assert not _run_paths_joined(_modules())


def test_the_run_path_checker_sees_a_joined_path(tmp_path, monkeypatch):
    pkg = tmp_path / "ownllm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("import os\ndef f(run):\n    return os.path.join(run, 'train_summary.json')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(pkg))
    assert _run_paths_joined(_modules()) == ["ownllm.x:3 os.path.join(run, 'train_summary.json')"]


def test_the_checker_sees_a_circle_and_a_private_import(tmp_path, monkeypatch):
    """The rules above would fail on a tree that breaks them (so the test can fail)."""
    pkg = tmp_path / "ownllm"
    (pkg / "a").mkdir(parents=True)
    (pkg / "b").mkdir()
    for p in (pkg, pkg / "a", pkg / "b"):
        (p / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def f():\n    from ownllm.b.y import _hidden\n")
    (pkg / "b" / "y.py").write_text("from ownllm.a.x import f\n_hidden = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(pkg))
    with pytest.raises(AssertionError, match="_hidden"):
        test_no_import_circles_and_no_private_names_across_packages()
    (pkg / "a" / "x.py").write_text("def f():\n    from ownllm.b.y import hidden\n")
    with pytest.raises(AssertionError, match=r"ownllm\.a\.x"):
        test_no_import_circles_and_no_private_names_across_packages()


def test_steps_per_epoch_counts_as_transformers_does():
    from ownllm.planning.estimate import steps_per_epoch

    assert steps_per_epoch(37, 4, 3) == 4         # 10 micro-batches: 3 + 3 + 3 + a partial step of 1
    assert steps_per_epoch(36, 4, 3) == 3
    assert steps_per_epoch(37, 4, 3, processes=2) == 2   # 5 micro-batches per process
    assert steps_per_epoch(3, 8, 4) == 1


def _distinct_rows(n: int) -> list[dict]:
    rng = random.Random(0)

    def words(k):
        return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 9))) for _ in range(k))

    return [{"messages": [{"role": "user", "content": f"{words(5)}?"}, {"role": "assistant", "content": words(6)}]}
            for _ in range(n)]


def test_an_epoch_and_additional_epochs_train_the_steps_transformers_runs(tiny_model_dir, tmp_path):
    """37 rows, micro-batch 4, accumulation 3: transformers runs 4 optimizer steps an epoch (the last
    one on a partial accumulation); one more epoch after a resume is 4 more, and config.yaml keeps
    what was asked while the summary says what --additional-epochs changed."""
    import yaml

    from ownllm.planning.estimate import steps_per_epoch
    from ownllm.training.trainer import Trainer

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _distinct_rows(37)), encoding="utf-8")
    args = {"precision": "fp32", "batch_size": 4, "grad_accum": 3, "epochs": 1, "split": "1,0,0", "protect": "off",
            "early_stopping_patience": 0, "logging_steps": 1, "output_dir": str(tmp_path / "run")}
    first = Trainer(model=tiny_model_dir, train_dataset=str(data), args=args).train()
    assert first["train_rows"] == 37
    assert first["global_step"] == steps_per_epoch(37, 4, 3) == 4 and first["epochs"] == 1.0
    assert first["adjusted"] is None
    again = Trainer(model=tiny_model_dir, train_dataset=str(data), args=args)
    again.resume_from_checkpoint()
    second = again.train(additional_epochs=1)
    assert second["global_step"] == 8 and second["epochs"] == 2.0
    assert second["adjusted"]["max_steps"] == 8 and "--additional-epochs 1 from step 4" in second["adjusted"]["why"]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved.get("max_steps") is None  # what was asked, not what the resume ran
