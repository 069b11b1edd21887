"""The layering contract (``[tool.importlinter]`` in pyproject.toml) as a test: flows → pipeline →
(model | storage), with model and storage independent of each other."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contract_holds():
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    out = subprocess.run(cmd + ["--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_contract_fails_on_a_planted_upward_or_sideways_import(tmp_path):
    """The same contract on a copy of the packages with two planted imports: storage → flows (up)
    and model → storage (across). lint-imports must fail and name both."""
    import os

    for pkg in ("flows", "pipeline", "model", "storage"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "storage" / "retry.py", "a") as fh:
        fh.write("\nimport flows.cli  # planted\n")
    with open(tmp_path / "model" / "metrics.py", "a") as fh:
        fh.write("\nimport storage.db  # planted\n")
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    out = subprocess.run(cmd + ["--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    said = out.stdout + out.stderr
    assert out.returncode != 0, said
    assert "BROKEN" in said and "storage.retry -> flows.cli" in said and "model.metrics -> storage.db" in said, said
