"""compare.png: eval cross-entropy of the tiny MoE run beside the dense tiny runs (this folder's
README). ``python results/lm_pretrain/tiny_moe/compare.py`` from the repo root."""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = {"MoE 8 experts top-2 (tiny_moe)": os.path.join(HERE, "metrics.jsonl"),
        "dense SwiGLU d_ff 336 (equal active)": os.path.join(HERE, "dense_swiglu336",
                                                             "metrics.jsonl"),
        "dense GELU d_ff 512 (tiny)": os.path.join(HERE, "..", "metrics.jsonl")}

fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
for name, path in RUNS.items():
    recs = [json.loads(line) for line in open(path)]
    tr = [r for r in recs if r["split"] == "train"]
    ev = [r for r in recs if r["split"] == "eval"]
    ax.plot([r["step"] for r in tr], [r["xent"] for r in tr], label=name, lw=0.8)
    bx.plot([r["step"] for r in ev], [r["xent"] for r in ev], "o-", label=name)
ax.set(xlabel="step", ylabel="train xent (nats/byte)", ylim=(1.3, 3.5), title="train")
bx.set(xlabel="step", ylabel="eval xent (nats/byte)", title="eval (held-out books)")
bx.legend()
fig.tight_layout()
fig.savefig(os.path.join(HERE, "compare.png"), dpi=110)
