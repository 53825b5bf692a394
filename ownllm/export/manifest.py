"""manifest.json: what was exported, from which run and config, file sizes and hashes, and each
check with its measured figure and whether it passed."""
from __future__ import annotations

import hashlib
import json
import os
import time


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check(name: str, measured: float | None, *, at_most: float | None = None, at_least: float | None = None,
          gates: bool = True, unmeasured: str = "") -> dict:
    """One measured check with the threshold it must meet (``at_most`` or ``at_least``). A check that
    ``gates`` the export stops it when it fails. ``measured`` None: there was nothing to measure
    (``unmeasured`` says why); the check then neither passes nor stops the export, it warns."""
    if (at_most is None) == (at_least is None):
        raise ValueError("a check has exactly one threshold: at_most or at_least")
    out = {"name": name, "measured": measured, "threshold": at_most if at_most is not None else at_least,
           "must_be": "at most" if at_most is not None else "at least"}
    if measured is None:
        return {**out, "passed": False, "gates": False, "note": f"not measured: {unmeasured}"}
    ok = measured <= at_most if at_most is not None else measured >= at_least
    return {**out, "passed": bool(ok), "gates": gates}


def status(c: dict) -> str:
    """pass, FAIL, or WARN (a check that does not stop the export, e.g. one with nothing to measure)."""
    return "pass" if c["passed"] else ("FAIL" if c.get("gates", True) else "WARN")


def describe(c: dict) -> str:
    """'measured (must be at most threshold)', as the CLI and the page show a check; older manifests
    stored a 'tolerance' that was an upper bound."""
    if c.get("measured") is None and c.get("note"):
        return f"{c['note']} (must be {c['must_be']} {c['threshold']})"
    if "threshold" in c:
        return f"{c['measured']} (must be {c['must_be']} {c['threshold']})"
    return f"{c['measured']} (tolerance {c.get('tolerance')})"


def raise_if_failed(manifest: dict, fmt: str, out: str) -> None:
    """Stop an export whose checks failed; the caller's staging folder is then removed, so nothing is written."""
    from ownllm.errors import OwnLLMError

    failed = [c for c in manifest["checks"] if not c["passed"] and c.get("gates", True)]
    if failed:
        said = "; ".join(f"{c['name']}: {describe(c)}" for c in failed)
        raise OwnLLMError(f"the {fmt} export failed its checks: {said}", hint=f"nothing was written at {out}")


def write_manifest(folder: str, fmt: str, source: str, checks: list[dict], extra: dict | None = None) -> dict:
    from ownllm.utils import atomic_write

    from ownllm.rundir import RunDir

    config = RunDir(source).config_yaml
    files = []
    for root, _, names in os.walk(folder):
        for n in sorted(names):
            if n == "manifest.json":
                continue
            p = os.path.join(root, n)
            files.append({"name": os.path.relpath(p, folder), "bytes": os.path.getsize(p), "sha256": sha256_file(p)})
    manifest = {"format": fmt, "source": os.path.abspath(source) if os.path.exists(source) else source,
                "config_sha256": sha256_file(config) if os.path.exists(config) else None,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files, "checks": checks,
                "all_checks_passed": all(c["passed"] for c in checks if c.get("gates", True)),
                "gating_checks": [c["name"] for c in checks if c.get("gates", True)],
                "warnings": [f"{c['name']}: {describe(c)}" for c in checks
                             if not c["passed"] and not c.get("gates", True)],
                **(extra or {})}
    atomic_write(os.path.join(folder, "manifest.json"), json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest
