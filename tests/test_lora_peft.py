"""LoRA adapters exchanged with PEFT (``lm/hf/peft.py``), both ways, against ``peft`` +
``transformers`` on tiny random Llama and Qwen3 checkpoints built in the test."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from lm import hf, lora, pretrained
from lm.config import Config, override
from lm.hf import peft as P
from lm.losses import bind
from lm.setup import build
from lm.sharding import ConfigError
from tests import hf_fixtures as F

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOL = 5e-5  # fp32; measured max |ours - peft| 8.1e-6 out, 8.8e-6 in (llama); 6.5e-6, 6.0e-6 (qwen3)


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def base_dir(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    F.build(request.param, str(d))
    return str(d)


@pytest.fixture
def base(base_dir):
    """(dir, a fresh transformers model of it): peft wraps a model in place."""
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir,
                                                              attn_implementation="eager")
    return base_dir, model.eval()


def valid(x, mask):
    return np.asarray(x)[np.asarray(mask) > 0]


def torch_logits(model, toks, mask):
    return F.hf_logits(model, toks, mask)


def with_random_adapters(cfg, params, seed=0):
    """``params`` + adapters of ``cfg.model.lora`` with random A and B (B != 0)."""
    shapes, _ = hf.checkpoint.param_layout(cfg)
    rng = np.random.default_rng(seed)
    ad = {p: (0.2 * rng.normal(size=s.shape)).astype(np.float32) for p, s in shapes.items()
          if lora.is_adapter(p)}
    return lora.combine(params, lora._nest(ad))


def test_export_loads_in_peft_with_the_same_logits(base, tmp_path):
    from peft import PeftModel
    path, model = base
    cfg, params = hf.load(path)
    cfg = dataclasses.replace(cfg, lora=lora.LoRACfg(rank=4, alpha=8.0))
    params = with_random_adapters(cfg, params)
    out = P.save_adapter(cfg, params, str(tmp_path / "adapter"), base=path)
    conf = json.loads(open(f"{out}/adapter_config.json").read())
    assert conf["r"] == 4 and conf["lora_alpha"] == 8.0 and set(conf["target_modules"]) == set(
        TARGETS) and conf["base_model_name_or_path"] == path
    pm = PeftModel.from_pretrained(model, out).eval()
    toks, mask = F.ragged_batch()
    ours = bind(hf.graphdef(cfg), params)(toks)
    want = torch_logits(pm, toks, mask)
    assert np.abs(valid(ours, mask) - valid(want, mask)).max() < TOL
    with pm.disable_adapter():  # the adapters really change the function
        plain = torch_logits(pm, toks, mask)
    assert np.abs(valid(plain, mask) - valid(want, mask)).max() > 1e-2


def test_peft_adapter_loads_here_with_the_same_logits(base, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    path, model = base
    torch.manual_seed(1)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=TARGETS,
                                          lora_dropout=0.0, use_rslora=True))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    pm.eval()
    ad_dir = str(tmp_path / "from_peft")
    pm.save_pretrained(ad_dir)
    toks, mask = F.ragged_batch(1)
    want = torch_logits(pm, toks, mask)
    cfg, params = hf.load(path, adapter=ad_dir)  # lm.hf.load --adapter
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.rslora) == (4, 16.0, True)
    got = bind(hf.graphdef(cfg), params)(toks)
    assert np.abs(valid(got, mask) - valid(want, mask)).max() < TOL
    # --set model.lora.init_from=ADAPTER with model.init_from=BASE: a run starts from it
    run = override(Config(), [f"model.init_from={path}", f"model.lora.init_from={ad_dir}",
                              "model.dtype=float32"])
    setup = build(run)
    got2 = bind(setup.graphdef, jax.device_get(setup.state["params"]))(toks)
    assert np.abs(valid(got2, mask) - valid(want, mask)).max() < TOL


def test_adapter_that_does_not_fit_is_one_clear_error(base, tmp_path):
    from peft import LoraConfig, get_peft_model
    path, _ = base
    other = F.build("llama", str(tmp_path / "wide"))  # its own config: d 32, but 2 kv heads
    pm = get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    ad = str(tmp_path / "ad")
    pm.save_pretrained(ad)
    sets = [f"model.init_from={path}", f"model.lora.init_from={ad}", "model.lora.rank=8"]
    with pytest.raises(ConfigError, match=r"model.lora.rank=8 \(adapter: 2\)"):
        pretrained.resolve(override(Config(), sets), set_keys=[s.split("=")[0] for s in sets])
    with pytest.raises(ConfigError, match="needs model.init_from"):
        pretrained.resolve(override(Config(), [f"model.lora.init_from={ad}"]))
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        hf.load(path, adapter=str(tmp_path))
    if "qwen3" in path:  # same module names, other shapes: head_dim 16 vs llama's 8
        with pytest.raises(ConfigError, match="does not match the base model"):
            hf.load(path, adapter=ad)
