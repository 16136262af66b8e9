"""Worker for test_distributed: ``python -m tests.dist_worker PID NPROC PORT LOCAL_DEVICES OUT``.

Trains the tiny GPT for a few steps on fixed global batches through the multi-host path
(``jax.distributed`` + ``make_array_from_process_local_data``) and writes the losses as JSON.
"""

import json
import sys

pid, nproc, port, local, out = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                int(sys.argv[4]), sys.argv[5])

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", local)
if nproc > 1:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                               process_id=pid)

from experiments.base import build  # noqa: E402
from experiments.config import Config  # noqa: E402
from lm import sharding as sh  # noqa: E402
from lm.optim import OptCfg  # noqa: E402
from lm.sharding import MeshCfg  # noqa: E402
from tests.helpers import TINY, random_batch  # noqa: E402

cfg = Config(model=TINY, opt=OptCfg(lr=1e-2, warmup=0), mesh=MeshCfg(data=-1))
setup = build(cfg)
state, losses = setup.state, []
for _ in range(3):
    g = random_batch(8, 16, TINY.vocab_size, seed=0)  # one global batch, fitted 3 times
    local_rows = {k: v[pid::nproc] for k, v in g.items()}  # this process's rows
    state, m = setup.train_step(state, sh.shard_batch(local_rows, setup.mesh))
    losses.append(float(m["loss"][0] / m["loss"][1]))
if pid == 0:
    with open(out, "w") as f:
        json.dump({"losses": losses, "devices": jax.device_count(),
                   "processes": jax.process_count()}, f)
if nproc > 1:
    jax.distributed.shutdown()
