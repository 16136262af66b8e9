"""Small shared builders for tests (tiny models, random batches, meshes)."""

import jax
import numpy as np
from flax import nnx

from lm import sharding as sh
from lm.model import GPT, ModelCfg

TINY = ModelCfg(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32)


def tiny_model(cfg: ModelCfg = TINY, seed: int = 0):
    """(graphdef, params) of a tiny GPT on one device."""
    model = GPT(cfg, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def random_batch(B: int, L: int, V: int, seed: int = 0, mask_frac: float = 0.0):
    rng = np.random.default_rng(seed)
    toks = rng.integers(0, V, (B, L + 1)).astype(np.int32)
    mask = (rng.random((B, L)) >= mask_frac).astype(np.float32)
    return {"inputs": toks[:, :-1], "targets": toks[:, 1:], "mask": mask}


def mesh(shape=(2, 2, 2)):
    return sh.make_mesh(sh.MeshCfg(*shape), jax.devices()[: int(np.prod(shape))])
