"""A 2-process jax.distributed run on 127.0.0.1 gives the same losses as 1 process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _run(nproc: int, local: int, tmp_path) -> dict:
    out = str(tmp_path / f"losses_{nproc}.json")
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    port = str(_port())
    procs = [subprocess.Popen([sys.executable, "-m", "tests.dist_worker", str(p), str(nproc),
                               port, str(local), out], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for p in range(nproc)]
    logs = [p.communicate(timeout=300)[0].decode() for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    with open(out) as f:
        return json.load(f)


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    one = _run(1, 2, tmp_path)
    two = _run(2, 1, tmp_path)
    assert one["devices"] == two["devices"] == 2
    assert two["processes"] == 2
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    assert two["losses"][-1] < two["losses"][0]
