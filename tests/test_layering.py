"""The layers contract (pyproject ``[tool.importlinter]``): tokenization < lm < rl < experiments.

``lint-imports`` must pass on the tree, and fail on a copy of it where one lm module lazily
imports the experiment layer inside a function (import-linter reads every import statement)."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("experiments", "rl", "lm", "tokenization")
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": cwd}
    return subprocess.run([LINT, "--config", os.path.join(cwd, "pyproject.toml"), "--no-cache"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _copy_tree(dst) -> str:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in PACKAGES:
        shutil.copytree(os.path.join(ROOT, pkg), os.path.join(dst, pkg), ignore=ignore)
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), dst)
    return str(dst)


def test_layers_contract_is_kept_and_catches_a_lazy_upward_import(tmp_path):
    tree = _copy_tree(tmp_path)
    ok = _lint(tree)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 kept, 0 broken" in ok.stdout
    with open(os.path.join(tree, "lm", "_crossed.py"), "w") as fh:
        fh.write("def f():\n    from experiments.base import main\n    return main\n")
    bad = _lint(tree)
    assert bad.returncode != 0
    assert "BROKEN" in bad.stdout and "lm._crossed -> experiments.base" in bad.stdout
