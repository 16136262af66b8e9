import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.config import Config
from lm.losses import LOSSES, get_loss, token_nll, xent, xent_from_logits
from lm.sharding import ConfigError
from lm.train import TrainCfg
from tests.helpers import tiny_model


def np_xent(logits, targets, mask, z):
    m = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - m).sum(-1)) + m[..., 0]
    tgt = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    nll = lse - tgt
    return ((nll + z * lse**2) * mask).sum() / mask.sum(), (nll * mask).sum()


@pytest.mark.parametrize("z", [0.0, 1e-3])
def test_xent_matches_numpy(z):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, (3, 5))
    mask = (rng.random((3, 5)) > 0.3).astype(np.float32)
    loss, aux = xent_from_logits(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), z)
    ref_loss, ref_sum = np_xent(logits.astype(np.float64), targets, mask, z)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(float(aux["xent"][0]), ref_sum, rtol=1e-5)
    assert float(aux["xent"][1]) == mask.sum()


def test_token_nll_hand_computed():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25]]]))
    nll, lse = token_nll(logits, jnp.array([[1]]))
    np.testing.assert_allclose(float(nll[0, 0]), np.log(4), rtol=1e-6)
    np.testing.assert_allclose(float(lse[0, 0]), 0.0, atol=1e-6)


def test_all_masked_is_zero_not_nan():
    loss, aux = xent_from_logits(jnp.ones((1, 3, 4)), jnp.zeros((1, 3), jnp.int32),
                                 jnp.zeros((1, 3)))
    assert float(loss) == 0.0 and float(aux["loss"][1]) == 0.0


def test_masked_tokens_get_zero_gradient():
    """Changing the target of a masked token changes neither loss nor gradient."""
    gd, params = tiny_model()
    cfg = Config(train=TrainCfg(z_loss=1e-4))
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 64, (2, 9)).astype(np.int32)
    mask = np.ones((2, 8), np.float32)
    mask[0, 3] = mask[1, 7] = 0.0
    b1 = {"inputs": toks[:, :-1], "targets": toks[:, 1:], "mask": mask}
    t2 = toks[:, 1:].copy()
    t2[0, 3], t2[1, 7] = (t2[0, 3] + 1) % 64, (t2[1, 7] + 5) % 64
    b2 = {**b1, "targets": t2}
    g = lambda b: jax.grad(lambda p: xent(p, b, model=gd, rng=None, cfg=cfg)[0])(params)
    for a, b in zip(jax.tree.leaves(g(b1)), jax.tree.leaves(g(b2))):
        np.testing.assert_array_equal(a, b)


def test_registry():
    assert LOSSES["xent"] is xent and get_loss("xent") is xent
    with pytest.raises(ConfigError, match="not a registered loss.*xent"):
        get_loss("nope")
