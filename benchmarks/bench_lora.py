"""LoRA vs full fine-tuning (this codebase), and LoRA here vs PEFT on transformers + torch.

    .venv/bin/python benchmarks/bench_lora.py [--repeats 3]

A SmolLM2-135M-shaped random Llama (30 layers, d 576, 9 heads, 3 kv heads, head_dim 64, d_ff 1536,
vocab 49152, tied, fp32) saved once with transformers, so every side starts from the same
weights. One AdamW step (lr 3e-4, constant) of token-mean cross-entropy on 4 x 256 random tokens:

- jax LoRA: ``lm.hf.load`` + ``model.lora`` rank 16, alpha 32 on q,k,v,o,gate,up,down, the
  library's jitted train step (gradient w.r.t. the adapters only; ``benchmarks.common.
  jax_train_setup``); jax full: the same step over every parameter (rank 0);
- peft-torch: ``peft.get_peft_model`` with the same LoRA config on ``LlamaForCausalLM`` (eager
  PyTorch, sdpa attention), ``torch.optim.AdamW`` over the trainable parameters, same threads
  (``torch.set_num_threads`` = the cores XLA uses).

Repeats interleave the three sides after a warmup (compile excluded); ratios are medians of
per-repeat ratios. Above the last line: ``lora/full optimizer_state bytes ratio`` (the Adam
state the step carries, target <= 0.05) and ``lora jax/peft-torch tokens_per_s ratio`` (target
>= 1.0); last line ``lora/full step_time ratio`` (target <= 0.75). ``BENCH_SMOKE=1``: 2 layers,
vocab 512, 2 x 32 tokens (seconds; figures meaningless).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import SMOKE, jax_train_setup, one_device_mesh, print_machine  # noqa: E402

RANK, ALPHA = 16, 32.0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def hf_config():
    import transformers
    return transformers.LlamaConfig(
        vocab_size=512 if SMOKE else 49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=2 if SMOKE else 30, num_attention_heads=9, num_key_value_heads=3,
        head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    import transformers
    from peft import LoraConfig, get_peft_model

    from lm import hf, lora
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=1 if SMOKE else 3)
    args = p.parse_args(argv)
    B, L = (2, 32) if SMOKE else (4, 256)
    torch.set_num_threads(os.cpu_count())
    print_machine(baseline="full fine-tuning (same step); peft 0.21 + transformers + torch "
                  f"eager, {torch.get_num_threads()} threads")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        transformers.LlamaForCausalLM(hf_config()).save_pretrained(d)
        mcfg, params = hf.load(d, mesh=one_device_mesh())
        model = transformers.LlamaForCausalLM.from_pretrained(d, attn_implementation="sdpa")
    tokens = np.random.default_rng(0).integers(0, mcfg.vocab_size, (B, L + 1))
    sides = {}
    for name, rank in (("lora", RANK), ("full", 0)):
        m = dataclasses.replace(mcfg, lora=lora.LoRACfg(rank=rank, alpha=ALPHA))
        if rank:  # the loaded base + fresh adapters (B = 0) of the same graph
            from flax import nnx

            from lm import sharding as sh
            from lm.model import GPT
            gd, shapes, shard = sh.abstract_params(lambda m=m: GPT(m, rngs=nnx.Rngs(0)),
                                                   one_device_mesh())
            fresh = sh.init_subset(lambda m=m: GPT(m, rngs=nnx.Rngs(0)), one_device_mesh(),
                                   {k for k in lora._flat(shapes) if lora.is_adapter(k)})
            loaded = (gd, lora.combine(params, fresh))
        else:
            loaded = (hf.graphdef(m), jax.tree.map(lambda x: x + 0, params))
        _, state, step, batch = jax_train_setup(m, B, L, loaded=loaded, tokens=tokens)
        sides[name] = [state, step, batch]
    opt_bytes = {k: sum(x.nbytes for x in jax.tree.leaves(v[0]["opt_state"]))
                 for k, v in sides.items()}

    pm = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS,
                                          lora_dropout=0.0)).train()
    opt = torch.optim.AdamW([q for q in pm.parameters() if q.requires_grad], lr=3e-4)
    t_in = torch.as_tensor(tokens[:, :-1], dtype=torch.long)
    t_out = torch.as_tensor(tokens[:, 1:], dtype=torch.long)

    def torch_step():
        logits = pm(input_ids=t_in).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 t_out.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def jax_step(name):
        st, fn, b = sides[name]
        st, met = fn(st, b)
        jax.block_until_ready(met)
        sides[name][0] = st

    for _ in range(2):  # warmup: compile, allocator
        jax_step("lora"), jax_step("full"), torch_step()
    rows = []
    for r in range(args.repeats):
        t = {"lora": timed(lambda: jax_step("lora")), "full": timed(lambda: jax_step("full")),
             "peft": timed(torch_step)}
        rows.append(t)
        print(f"repeat {r}: jax lora {t['lora']:.3f} s  jax full {t['full']:.3f} s  "
              f"peft-torch lora {t['peft']:.3f} s  ({B}x{L} tokens)")
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"median step: jax lora {med['lora']:.3f} s ({B * L / med['lora']:.0f} tok/s), "
          f"jax full {med['full']:.3f} s, peft-torch lora {med['peft']:.3f} s "
          f"({B * L / med['peft']:.0f} tok/s)")
    print(f"optimizer state: lora {opt_bytes['lora'] / 2**20:.1f} MiB, full "
          f"{opt_bytes['full'] / 2**20:.1f} MiB")
    print(f"lora/full optimizer_state bytes ratio: {opt_bytes['lora'] / opt_bytes['full']:.2f}")
    print("lora jax/peft-torch tokens_per_s ratio: "
          f"{statistics.median(r['peft'] / r['lora'] for r in rows):.2f}")
    ratio = statistics.median(r["lora"] / r["full"] for r in rows)
    print(f"lora/full step_time ratio: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
