"""Every notebook is paired with its jupytext .py and executes headless."""

import glob
import os

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def _sources(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_paired_py_matches(path):
    py = jupytext.read(path[: -len(".ipynb")] + ".py")
    assert _sources(py) == _sources(jupytext.read(path)), "run `jupytext --sync` on the pair"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    env_flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = ""  # the kernel runs like a user's: one CPU device
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ["XLA_FLAGS"] = env_flags
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
