"""The README's code runs: the add-a-loss snippet registers a loss the train step can use."""

import os
import re

import jax
import numpy as np

from experiments.config import Config
from lm import losses
from tests.helpers import TINY, random_batch, tiny_model

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _blocks():
    return re.findall(r"```python\n(.*?)```", open(README).read(), flags=re.S)


def test_add_a_loss_snippet(monkeypatch):
    monkeypatch.setattr(losses, "LOSSES", dict(losses.LOSSES))
    snippet = next(b for b in _blocks() if "LOSSES[" in b)
    exec(compile(snippet, "README.md", "exec"), {})
    fn = losses.get_loss("label_smoothed_xent")
    gd, params = tiny_model()
    batch = random_batch(2, 8, TINY.vocab_size)
    loss, aux = fn(params, batch, model=gd, rng=None, cfg=Config(model=TINY))
    base, _ = losses.xent(params, batch, model=gd, rng=None, cfg=Config(model=TINY))
    np.testing.assert_allclose(float(loss), float(aux["loss"][0] / aux["loss"][1]), rtol=1e-6)
    assert abs(float(loss) - float(base)) < 0.1 * float(base)
    g = jax.grad(lambda p: fn(p, batch, model=gd, rng=None, cfg=None)[0])(params)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(g))


def test_add_an_experiment_snippet_parses():
    snippet = next(b for b in _blocks() if "def run(cfg, workdir" in b)
    ns = {"__name__": "readme_experiment"}
    exec(compile(snippet, "README.md", "exec"), ns)
    cfg = ns["tiny"]()
    assert cfg.opt.lr == 1e-3 and cfg.run.name == "my_study_tiny"
