"""``python -m lm.hf``: inspect a Hugging Face checkpoint, export a run, sample from one.

    python -m lm.hf inspect DIR
    python -m lm.hf export RUN_DIR OUT_DIR [--step N] [--tokenizer-dir DIR] [--adapter|--merge]
    python -m lm.hf sample DIR --prompt "..." [--chat] [--max-new-tokens 32] [--temperature 0]
                           [--adapter ADAPTER_DIR]

A LoRA run (``model.lora``) exports as a PEFT adapter directory (``--adapter``:
``adapter_config.json`` + ``adapter_model.safetensors``, ``base_model_name_or_path`` = the
run's ``model.init_from``) or as a full checkpoint with the adapters merged (``--merge``).

Errors (a bad directory, an unsupported family, a non-empty output) print ``error: ...`` and
exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from lm.sharding import ConfigError


def cmd_inspect(args) -> int:
    from lm import hf
    info = hf.inspect(args.dir)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.dir}: {info['family']}, {info['params']:,} parameters, {info['dtype']}")
    print(f"  layers {info['layers']}  d_model {info['d_model']}  heads {info['heads']}  "
          f"kv-heads {info['kv_heads']}  head_dim {info['head_dim']}  d_ff {info['d_ff']}")
    print(f"  vocab {info['vocab']}  max_len {info['max_len']}  tied {info['tied']}  "
          f"tensors mapped {info['tensors_mapped']}/{info['tensors']} "
          f"({info['bytes'] / 2**20:.1f} MiB)")
    print(f"  layers: {info['layer_pattern']}")
    return 0


def cmd_export(args) -> int:
    import os

    from lm import hf
    from lm.probe import load_run_config, restore_params
    if os.path.isdir(args.out_dir) and os.listdir(args.out_dir):
        raise ConfigError(f"{args.out_dir} exists and is not empty; choose a new directory")
    from lm import lora
    from lm.hf import peft
    cfg = load_run_config(args.run_dir)
    hf.checkpoint.families.choose_family(cfg.model)  # refuse before restoring anything
    if cfg.model.lora.on and not (args.adapter or args.merge):
        raise ConfigError(f"{args.run_dir} is a LoRA run (model.lora.rank="
                          f"{cfg.model.lora.rank}): pass --adapter (a PEFT adapter dir) or "
                          "--merge (a full checkpoint with the adapters merged)")
    if (args.adapter or args.merge) and not cfg.model.lora.on:
        raise ConfigError(f"--adapter/--merge: {args.run_dir} has no LoRA adapters "
                          "(model.lora.rank=0); export it without them")
    if args.adapter:
        peft._check_family(cfg.model)
        if hf.checkpoint.layout_family(cfg.model.init_from) == "phi3":
            raise ConfigError("PEFT adapters for a phi3 base (fused qkv_proj/gate_up_proj) are "
                              "not supported; export with --merge")
    setup, params, step = restore_params(args.run_dir, cfg, args.step)
    model = setup.cfg.model
    if args.adapter:
        peft.save_adapter(model, params, args.out_dir, base=model.init_from)
        what = "a PEFT adapter"
    else:
        if args.merge:
            params = lora.merged(params, model)
            model = dataclasses.replace(model, lora=lora.LoRACfg())
        prefer = hf.checkpoint.layout_family(model.init_from)  # a Phi-3 stays fused
        hf.save(model, params, args.out_dir, tokenizer_dir=args.tokenizer_dir, family=prefer)
        what = hf.checkpoint.families.choose_family(model, prefer)
    print(f"exported {args.run_dir} step {step} as {what} to {args.out_dir}")
    return 0


def cmd_sample(args) -> int:
    import jax
    import jax.numpy as jnp

    from lm import hf
    from lm.sample import SampleCfg, generate
    from tokenization.hf import HFTokenizer
    try:
        tok = HFTokenizer.load(args.dir)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    cfg, params = hf.load(args.dir, dtype=args.dtype, adapter=args.adapter)
    if args.chat:
        ids = tok.apply_chat_template([{"role": "user", "content": args.prompt}],
                                      add_generation_prompt=True, tokenize=True)
    else:
        ids = tok.encode(args.prompt)
    ids = [int(i) for i in ids]
    if not ids:
        raise ConfigError("--prompt encodes to no tokens")
    eos = sorted(tok.eos_ids)
    n = min(args.max_new_tokens, cfg.max_len - len(ids))
    if n < 1:
        raise ConfigError(f"the prompt has {len(ids)} tokens; model.max_len is {cfg.max_len}")
    out = generate(hf.graphdef(cfg), params, jnp.asarray([ids], jnp.int32),
                   jnp.asarray([len(ids)]),
                   SampleCfg(max_new_tokens=n, temperature=args.temperature,
                             eos_id=eos[0] if eos else None, stop_ids=tuple(eos[1:])),
                   jax.random.key(args.seed))
    new = [int(t) for t, m in zip(out["tokens_BxT"][0], out["mask_BxT"][0])
           if m and int(t) not in tok.eos_ids]  # sampling stopped at the first eos of any kind
    print(tok.decode(new, skip_special_tokens=True))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lm.hf", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("inspect", help="family, sizes and tensors of a checkpoint")
    s.add_argument("dir")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("export", help="a run directory's latest checkpoint as a HF directory")
    s.add_argument("run_dir")
    s.add_argument("out_dir")
    s.add_argument("--step", type=int, default=None)
    s.add_argument("--tokenizer-dir", default=None)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--adapter", action="store_true", help="LoRA run: a PEFT adapter dir")
    g.add_argument("--merge", action="store_true", help="LoRA run: adapters merged in")
    s = sub.add_parser("sample", help="continue a prompt with a HF checkpoint")
    s.add_argument("dir")
    s.add_argument("--prompt", required=True)
    s.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    s.add_argument("--adapter", default=None, help="a PEFT LoRA adapter dir on top of DIR")
    args = p.parse_args(argv)
    try:
        return {"inspect": cmd_inspect, "export": cmd_export, "sample": cmd_sample}[args.cmd](
            args)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
