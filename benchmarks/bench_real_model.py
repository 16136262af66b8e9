"""A real pretrained model (SmolLM2-135M-Instruct): train step and GRPO rollouts vs transformers.

    make smollm2 && .venv/bin/python benchmarks/bench_real_model.py [--repeats 3]

Both sides load the same Hugging Face checkpoint (``data_cache/smollm2-135m-instruct``, built by
``make smollm2``; fp32) and use the same threads (``torch.set_num_threads`` = the cores XLA uses).

- train: one AdamW step (lr 3e-4, betas 0.9/0.95, wd 0.1 on matrices, clip 1.0) of token-mean
  cross-entropy on 4 x 128 real tokens (this repo's README through the checkpoint's tokenizer).
  jax: ``lm.hf.load`` + the library's jitted train step (``benchmarks.common.jax_train_setup``,
  as bench_train_step); torch: ``transformers.LlamaForCausalLM`` eager (sdpa attention).
- rollout: GRPO-style sampling, 16 chat prompts ("What is a + b? Answer with the number only."
  after the system message "You are a helpful assistant.", as the grpo_arithmetic smollm2 preset
  asks, rendered by ``tokenization.hf`` with the checkpoint's chat template) x 8 samples x 32 new
  tokens, temperature 1, no top-k/top-p, EOS not stopping rows on either side (fixed work:
  128 x 32 new tokens). jax: ``lm.sample.generate(..., group_size=8)`` (each prompt prefilled
  once, its KV cache shared by its 8 rows; what ``rl.rollout`` samples with); hf: transformers'
  ``generate(do_sample=True, num_return_sequences=8)`` on the same prompts (left-padded).
  Printed beside it: jax without prefix sharing (the prompts repeated 8 times) and the whole
  ``rl.rollout`` with ``scoring="cached"`` (sampling + the reference log-probs through the
  shared prefill; the behaviour log-probs are the sampler's; the hf row does neither). Its
  default ``scoring="forward"`` adds two full forwards over the [128, P+T] rows instead: 53.7 s
  against 13.4 s of sampling here (AMD EPYC, 2 cores), ~4x.

Repeats interleave the sides; warmup (and compile) is excluded; ratios are medians of per-repeat
ratios. Each section prints the load average: on a machine other jobs load, torch eager slows
down far more than XLA (measured here at load 6-8 on 2 cores: torch steps 3x, generate 5x
slower than the jax sides, against 1.04x and 1.78x on the idle machine in specs), so only a
run at load < 1 gives the figure to record. The last two lines are
``real-model train jax/torch tokens_per_s ratio: X.XX`` and
``real-model rollout jax/hf tokens_per_s ratio: X.XX``. ``BENCH_SMOKE=1``: a random model of
SmolLM2's shape but 2 layers, saved with transformers in a temp dir with a small BPE tokenizer,
tiny sizes (seconds; figures meaningless).
"""

from __future__ import annotations

import argparse
import gc
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import (  # noqa: E402
    SMOKE,
    cpu_model,
    jax_train_setup,
    one_device_mesh,
    print_machine,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
CKPT = ROOT / "data_cache" / "smollm2-135m-instruct"
QUESTION = "What is {a} + {b}? Answer with the number only."
SYSTEM = "You are a helpful assistant."  # as experiments.grpo_arithmetic --preset smollm2
# SmolLM2-135M-Instruct's chat template (ChatML with a default system message)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")


def cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def smoke_checkpoint(out: str, n_layers: int = 2) -> str:
    """A random ``LlamaForCausalLM`` of SmolLM2-135M's shape (``n_layers`` layers) and a small
    BPE tokenizer (ids 0/1/2 = ``<|endoftext|>``/``<|im_start|>``/``<|im_end|>`` as SmolLM2's)
    with SmolLM2's chat template, saved by transformers in ``out``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([readme_text()], trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|im_end|>", unk_token="<|endoftext|>", chat_template=SMOLLM2_TEMPLATE)
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=n_layers,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, hidden_act="silu",
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
        max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def readme_text() -> str:
    return (ROOT / "README.md").read_text()


def hf_model(path: str):
    """transformers' fp32 ``LlamaForCausalLM`` (sdpa attention) with its weights copied into
    process memory: loaded from safetensors they can stay views of the memory-mapped file, which
    a loaded machine pages out and re-reads mid-step (the jax side's arrays are copies)."""
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                          attn_implementation="sdpa")
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    return model


# ----------------------------------------------------------------------------- train step


def train_sides(path: str, tok, batch: int, seq: int):
    """``{name: (ctx, run)}`` for the jax and torch train steps on the same batch."""

    from lm import hf

    ids = tok.encode(readme_text(), add_special_tokens=False)
    n = batch * (seq + 1)
    if len(ids) < n:
        raise SystemExit(f"error: README.md gives {len(ids)} tokens, need {n}")
    toks = np.asarray(ids[:n], np.int64).reshape(batch, seq + 1)

    mcfg, params = hf.load(path, mesh=one_device_mesh(), dtype="float32", max_len=seq)
    _, state, step, b = jax_train_setup(mcfg, batch, seq, loaded=(hf.graphdef(mcfg), params),
                                        tokens=toks)
    jctx = {"state": state, "step": step, "batch": b}

    model = hf_model(path)
    model.train()
    named = list(model.named_parameters())  # the tied lm_head is listed once (as the embedding)
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    other = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    t = torch.from_numpy(toks)
    tctx = {"model": model, "opt": opt, "inputs": t[:, :-1], "targets": t[:, 1:]}
    return {"jax (jit)": (jctx, jax_step), "torch (eager)": (tctx, torch_step)}


def jax_step(ctx) -> float:
    t0 = time.perf_counter()
    ctx["state"], metrics = ctx["step"](ctx["state"], ctx["batch"])
    jax.block_until_ready((ctx["state"], metrics))
    dt = time.perf_counter() - t0
    ctx.setdefault("losses", []).append(float(metrics["loss"][0] / metrics["loss"][1]))
    return dt


def torch_step(ctx) -> float:
    model, opt = ctx["model"], ctx["opt"]
    t0 = time.perf_counter()
    logits = model(ctx["inputs"]).logits
    loss = F.cross_entropy(logits.flatten(0, 1), ctx["targets"].flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
    opt.step()
    dt = time.perf_counter() - t0
    ctx.setdefault("losses", []).append(float(loss.detach()))
    return dt


# ----------------------------------------------------------------------------- rollouts


def chat_prompts(tok, n: int, seed: int = 0) -> list[list[int]]:
    """Two-digit addition questions with the grpo_arithmetic smollm2 preset's system message."""
    rng = np.random.default_rng(seed)
    msgs = [[{"role": "system", "content": SYSTEM},
             {"role": "user", "content": QUESTION.format(a=int(a), b=int(b))}]
            for a, b in rng.integers(10, 100, (n, 2))]
    return [[int(i) for i in tok.apply_chat_template(m, add_generation_prompt=True,
                                                     tokenize=True)] for m in msgs]


def rollout_sides(path: str, prompts, group: int, new_tokens: int, with_rollout: bool):

    from lm import hf
    from lm import sample as S
    from rl.rollout import rollout

    N, P = len(prompts), max(map(len, prompts))
    lens = np.array([len(p) for p in prompts], np.int32)
    right = np.zeros((N, P), np.int32)
    left = np.full((N, P), 2, np.int64)  # <|im_end|> pads (masked)
    for i, p in enumerate(prompts):
        right[i, :len(p)] = p
        left[i, P - len(p):] = p
    mcfg, params = hf.load(path, dtype="float32", max_len=P + new_tokens)
    gd = hf.graphdef(mcfg)
    scfg = S.SampleCfg(max_new_tokens=new_tokens, temperature=1.0)
    prompt, plen = jnp.asarray(right), jnp.asarray(lens)
    rep, rep_len = jnp.repeat(prompt, group, 0), jnp.repeat(plen, group, 0)
    key = jax.random.key(0)

    def jax_shared(ctx):
        return S.generate(gd, params, prompt, plen, scfg, key, group_size=group)["tokens_BxT"]

    def jax_repeated(ctx):
        return S.generate(gd, params, rep, rep_len, scfg, key)["tokens_BxT"]

    def jax_rollout(ctx):
        return rollout(gd, params, params, prompt, plen, group_size=group, sample_cfg=scfg,
                       rng=key, scoring="cached")["old_logp"]

    model = hf_model(path)
    model.eval()
    model.generation_config.eos_token_id = None  # fixed work: rows do not stop at EOS
    attn = torch.from_numpy((np.arange(P)[None] >= (P - lens)[:, None]).astype(np.int64))
    ids = torch.from_numpy(left)

    def hf_generate(ctx):
        torch.manual_seed(len(ctx.setdefault("calls", [])))
        ctx["calls"].append(1)
        out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True,
                             temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                             num_return_sequences=group, pad_token_id=2)
        return out[:, P:]

    sides = {"jax shared prefill": jax_shared, "hf generate": hf_generate,
             "jax prompt x G": jax_repeated}
    if with_rollout:
        sides["jax rl.rollout"] = jax_rollout
    return sides, S._generate_jit


def timed(fn, ctx) -> float:
    t0 = time.perf_counter()
    out = fn(ctx)
    if isinstance(out, jax.Array):
        out = jax.block_until_ready(out)
    ctx["shape"] = tuple(out.shape)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- driver


def interleave(sides: dict, repeats: int, warmup: int = 1) -> dict:
    """``{name: [seconds per repeat]}``; each side runs ``warmup`` times first."""
    for ctx, run in sides.values():
        for _ in range(warmup):
            run(ctx)
    times = {k: [] for k in sides}
    for _ in range(repeats):
        for k, (ctx, run) in sides.items():
            time.sleep(0.2)  # let the other side's idle threads park
            times[k].append(run(ctx))
            print(f"  ({k}: {times[k][-1]:.2f} s)", file=sys.stderr, flush=True)
    return times


def ratio(times, num: str, den: str) -> float:
    """Median over repeats of ``num``'s tokens/s over ``den``'s (= den time / num time)."""
    return statistics.median(d / n for n, d in zip(times[num], times[den]))


def bench_train(path, tok, args, cpu) -> float:
    B, L = args.batch, args.seq
    sides = train_sides(path, tok, B, L)
    t0 = time.perf_counter()
    for ctx, run in sides.values():
        run(ctx)  # compile / first step, excluded
    first = time.perf_counter() - t0
    load0 = os.getloadavg()[0]
    tt = interleave(sides, args.train_repeats, warmup=0 if SMOKE else 1)
    print(f"\n[train] one fp32 AdamW xent step, {B} x {L} real tokens; cpu: {cpu}")
    print(f"{'impl':<16}{'s/step':>9}{'tokens/s':>10}{'min s':>8}{'max s':>8}  first loss")
    for k, (ctx, _) in sides.items():
        ts = tt[k]
        print(f"{k:<16}{statistics.median(ts):>9.3f}{B * L / statistics.median(ts):>10.0f}"
              f"{min(ts):>8.3f}{max(ts):>8.3f}  {ctx['losses'][0]:.4f}")
    r = ratio(tt, "jax (jit)", "torch (eager)")
    per = ", ".join(f"{t / j:.2f}" for j, t in zip(tt["jax (jit)"], tt["torch (eager)"]))
    print(f"jax/torch tokens/s: median of per-repeat ratios {r:.2f} ({per}); first steps "
          f"(jax compile) {first:.1f}s; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    return r


def bench_rollout(path, tok, args, cpu) -> float:
    prompts = chat_prompts(tok, args.prompts)
    G, T = args.group, args.new_tokens
    fns, gen_jit = rollout_sides(path, prompts, G, T, with_rollout=not args.no_rollout_row)
    sides = {k: ({}, (lambda ctx, f=f: timed(f, ctx))) for k, f in fns.items()}
    for ctx, run in sides.values():
        run(ctx)  # compile / first call, excluded
    compiled = gen_jit._cache_size()
    load0 = os.getloadavg()[0]
    rt = interleave(sides, args.repeats, warmup=0)
    recompiles = gen_jit._cache_size() - compiled
    n_tok = len(prompts) * G * T
    lens = [len(p) for p in prompts]
    print(f"\n[rollout] {len(prompts)} chat prompts ({min(lens)}-{max(lens)} tokens) x {G} "
          f"samples x {T} new tokens = {n_tok} tokens, temperature 1; cpu: {cpu}")
    print(f"{'impl':<20}{'s/rollout':>10}{'tokens/s':>10}{'min s':>8}{'max s':>8}  vs hf")
    for k, (ctx, _) in sides.items():
        ts = rt[k]
        assert ctx["shape"][0] == len(prompts) * G, (k, ctx["shape"])
        if k != "jax rl.rollout":
            assert ctx["shape"][1] == T, (k, ctx["shape"])
        print(f"{k:<20}{statistics.median(ts):>10.2f}{n_tok / statistics.median(ts):>10.0f}"
              f"{min(ts):>8.2f}{max(ts):>8.2f}  {ratio(rt, k, 'hf generate'):.2f}")
    r = ratio(rt, "jax shared prefill", "hf generate")
    per = ", ".join(f"{h / j:.2f}" for j, h in zip(rt["jax shared prefill"], rt["hf generate"]))
    print(f"jax shared prefill / hf generate tokens/s per repeat: {per}; prefix sharing (shared /"
          f" prompt x G): {ratio(rt, 'jax shared prefill', 'jax prompt x G'):.2f}; "
          f"lm.sample.generate compiles during the timed repeats: {recompiles}; load average "
          f"{load0:.1f} -> {os.getloadavg()[0]:.1f}")
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(CKPT))
    ap.add_argument("--repeats", type=int, default=1 if SMOKE else 3)
    ap.add_argument("--train-repeats", type=int, default=1 if SMOKE else 5)
    ap.add_argument("--prompts", type=int, default=2 if SMOKE else 16)
    ap.add_argument("--group", type=int, default=2 if SMOKE else 8)
    ap.add_argument("--new-tokens", type=int, default=4 if SMOKE else 32)
    ap.add_argument("--batch", type=int, default=2 if SMOKE else 4)
    ap.add_argument("--seq", type=int, default=16 if SMOKE else 128)
    ap.add_argument("--part", choices=("both", "train", "rollout"), default="both")
    ap.add_argument("--no-rollout-row", action="store_true",
                    help="skip the full rl.rollout row (sampling + reference scoring)")
    args = ap.parse_args(argv)

    tmp = None
    if SMOKE:
        tmp = tempfile.TemporaryDirectory()
        path = smoke_checkpoint(tmp.name)
    else:
        path = args.checkpoint
        if not os.path.exists(os.path.join(path, "config.json")):
            raise SystemExit(f"error: no SmolLM2 checkpoint at {path}: run `make smollm2` first "
                             "(or BENCH_SMOKE=1 for a random model of its shape)")
    from tokenization.hf import HFTokenizer
    tok = HFTokenizer.load(path)

    threads = cpu_threads()
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    cpu = cpu_model()
    print_machine(baseline="transformers + torch eager on the same checkpoint, batch, prompts "
                  "and threads (train step; generate)")
    import transformers
    print(f"checkpoint {path if not SMOKE else '(random, smoke)'}; jax {jax.__version__} "
          f"({jax.devices()[0].platform}), torch {torch.__version__} "
          f"threads={torch.get_num_threads()}, XLA threads={threads}, transformers "
          f"{transformers.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")

    parts = ("train", "rollout") if args.part == "both" else (args.part,)
    got = {}
    for part in parts:  # one function each, so a part's models are freed before the next
        got[part] = (bench_train if part == "train" else bench_rollout)(path, tok, args, cpu)
        gc.collect()
    fmt = lambda k: f"{got[k]:.2f}" if k in got else "skipped (--part)"
    print(f"\nratios on {cpu}: train jax/torch {fmt('train')} (target >= 1.1), rollout "
          f"jax/hf {fmt('rollout')} (target >= 2.0)")
    print(f"real-model train jax/torch tokens_per_s ratio: {fmt('train')}")
    print(f"real-model rollout jax/hf tokens_per_s ratio: {fmt('rollout')}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
