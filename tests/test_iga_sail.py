"""SAIL bookkeeping: gaps, copies, sources, hint-free pairs, cumulative data, arithmetic; and the
tiny preset end to end."""

import json

import pytest

from experiments.iga_scenarios import SCENARIOS, World
from rl.iga import prompts as Pr
from rl.iga import sail
from rl.iga.agents import RuleTeacher, ScriptedHelper

W = World(["forbidden_entity"])
SC = SCENARIOS["forbidden_entity"]
QUERIES = ["which animal has tusks", "which animal has a mane", "tell me about the elephant",
           "which animal has ivory"]


def items():
    return sail.build_references(RuleTeacher(W), [(q, SC.rule, q) for q in QUERIES])


class FakeStudent:
    """Naive prompts: the rule-free answer; hinted prompts: follows the hint. Logs prompts."""

    def __init__(self):
        self.seen = []

    def chat_many(self, chats, temperature=0.8, seed=0):
        out = []
        for c in chats:
            p = Pr.parse_prompt(c)
            self.seen.append(p["kind"])
            follow = p["kind"] == "propose" and W.restricted_by_hint(
                p["rule"], p["query"], p["hint"].split(" ; "))
            out.append(W.answer(p["rule"], p["query"], follow, 0))
        return out


def judge():
    return sail.make_judge(W.decision)


def test_only_gaps_get_extra_copies_and_sources_are_tracked():
    its = items()
    cfg = sail.SAILCfg(n_think=5, n_parrot=10)
    helpers = [ScriptedHelper(W, 1, 0.0, name="h0"), ScriptedHelper(W, 2, 0.0, name="h1")]
    stu = FakeStudent()
    pairs, st = sail.collect(stu, helpers, its, judge(), cfg, iteration=1, seed=0)
    by = {q: [p for p in pairs if p.query == q] for q in QUERIES}
    # mane: rule-free answer is right -> exactly one student sample, no copies
    assert [(p.source, p.answer) for p in by["which animal has a mane"]] == [
        ("student", "that is the lion .")]
    # tusks, direct elephant: naive fails, all 5 hinted retries succeed (teacher graph links them)
    for q in ("which animal has tusks", "tell me about the elephant"):
        assert [p.source for p in by[q]] == ["hinted_student"] * 5
    # ivory: the teacher (1 round) itself misses the 2-hop link, so its reference is rule-free
    # and the student's naive answer already agrees with it (an inherited teacher error)
    assert [p.source for p in by["which animal has ivory"]] == ["student"]
    assert st["n_gaps"] == 2 and st["n_gaps_after_think"] == 0 and st["n_unsolved"] == 0
    assert st["sources"] == {"student": 2, "hinted_student": 10}
    assert stu.seen == ["naive"] * 4 + ["propose"] * 10


def test_helpers_and_parrot_fill_remaining_gaps():
    its = items()
    stubborn = type("S", (), {"chat_many": lambda self, chats, temperature=0.8, seed=0:
                              ["that is the elephant ."] * len(chats)})()
    h0 = ScriptedHelper(W, 1, error_rate=1.0, parrot_fidelity=1.0, name="h0")  # propose wrong
    h1 = ScriptedHelper(W, 2, error_rate=0.0, name="h1")
    pairs, st = sail.collect(stubborn, [h0, h1], its, judge(), sail.SAILCfg(n_parrot=3),
                             iteration=2, seed=1)
    tusk = [p.source for p in pairs if p.query == "which animal has tusks"]
    assert tusk == ["h0_parrot"] * 3  # h0's 3 proposals fail, its 3 parrots succeed
    assert st["n_unsolved"] == 0 and all(p.iteration == 2 for p in pairs)
    pairs, st = sail.collect(stubborn, [h0, h1], its, judge(),
                             sail.SAILCfg(n_parrot=3, use_parrot=False), iteration=1)
    assert [p.source for p in pairs if p.query == "which animal has tusks"] == ["h1"]
    pairs, st = sail.collect(stubborn, [h0, h1], its, judge(),
                             sail.SAILCfg(use_helpers=False), iteration=1)
    assert st["n_unsolved"] == 3 and not [p for p in pairs if p.query ==  # tusks, elephant, mane
                                          "which animal has tusks"]


def test_no_hint_reaches_training_prompts_and_no_hint_ablation_uses_naive_retries():
    its = items()
    stu = FakeStudent()
    pairs, _ = sail.collect(stu, [], its, judge(), sail.SAILCfg(), iteration=1)
    assert any(p.source == "hinted_student" for p in pairs)
    for msgs, _ in sail.training_chats(pairs):
        text = json.dumps(msgs)
        assert "<hint>" not in text and "<prev>" not in text and " ; " not in text
        assert msgs == Pr.naive(SC.rule, Pr.parse_prompt(msgs)["query"])
    stu = FakeStudent()
    pairs, st = sail.collect(stu, [], its, judge(), sail.SAILCfg(use_hint=False), iteration=1)
    assert "propose" not in stu.seen and st["n_gaps_after_think"] == 2


def test_loop_accumulates_data_fresh_from_base_or_continued():
    its = items()
    calls = []

    def finetune(start, pairs, k):
        calls.append((start, len(pairs), {p.iteration for p in pairs}))
        return f"params{k}"

    evals = iter([{"pass": {"a": True, "b": True}, "compliance": 1.0},
                  {"pass": {"a": False, "b": True}, "compliance": 0.5},
                  {"pass": {"a": True, "b": False}, "compliance": 0.5}])
    _, hist = sail.run("base", its, make_student=lambda p: FakeStudent(), helpers=[],
                       judge=judge(), finetune=finetune, evaluate=lambda p: next(evals),
                       cfg=sail.SAILCfg(iterations=3))
    assert [c[0] for c in calls] == ["base"] * 3
    assert [c[1] for c in calls] == [12, 24, 36] and calls[2][2] == {1, 2, 3}
    assert [h["regressions"] for h in hist] == [0, 1, 1]
    assert [h["n_data"] for h in hist] == [12, 24, 36]
    calls.clear()
    evals = iter([{"pass": {}, "compliance": 0.0}] * 2)
    sail.run("base", its, make_student=lambda p: FakeStudent(), helpers=[], judge=judge(),
             finetune=finetune, evaluate=lambda p: next(evals),
             cfg=sail.SAILCfg(iterations=2, continue_training=True))
    assert [c[0] for c in calls] == ["base", "params1"]


def test_relative_improvement_and_judge_noise():
    assert sail.relative_improvement(0.5, 0.8) == pytest.approx(60.0)
    assert sail.relative_improvement(0.4, 0.2) == pytest.approx(-50.0)
    assert sail.relative_improvement(0.0, 0.3) is None
    it = items()[0]
    flip = sail.make_judge(W.decision, noise=1.0)
    assert judge()(it, it.reference) and not flip(it, it.reference)
    assert not judge()(it, "   ")
    with pytest.raises(ValueError):
        sail.SAILCfg(iterations=0)


@pytest.mark.slow
def test_tiny_preset_end_to_end(tmp_path):
    """1 scenario, 20 train queries, 1 iteration through the CLI."""
    from experiments.base import main
    from experiments.iga_rules import PRESETS, run
    wd = tmp_path / "run"
    rc = main(PRESETS, run, argv=[
        "--preset", "smoke", "--workdir", str(wd), "--set", "iga.scenarios=forbidden_entity",
        "iga.max_train=20", "iga.pretrain_steps=60", "iga.sft_steps=10", "iga.n_parrot=2",
        "iga.batch_size=16"])
    assert rc == 0
    rows = [json.loads(x) for x in open(wd / "results.jsonl")]
    arms = [r["arm"] for r in rows]
    assert arms == ["teacher_naive", "teacher_igp", "base", "plain_sft", "iga"]
    teacher = {r["arm"]: r["compliance"] for r in rows[:2]}
    assert teacher["teacher_igp"] > teacher["teacher_naive"]
    iga = rows[-1]
    assert iga["n_queries"] == 20 and iga["n_gaps"] >= iga["n_gaps_after_think"]
    assert sum(iga["sources"].values()) == iga["n_pairs"] == iga["n_data"]
    assert 0.0 <= iga["compliance"] <= 1.0
    # it learns: 10 SFT steps lift test compliance from the base's 0.00 to 0.55 when recorded
    base = next(r for r in rows if r["arm"] == "base")
    for r in rows[3:]:
        assert r["compliance"] >= base["compliance"] + 0.25, (r["arm"], r["compliance"])
    refs = [json.loads(x) for x in open(wd / "references.jsonl")]
    assert len(refs) == 20 and all(r["hint"].startswith("I ") for r in refs)
    for f in ("README.md", "plot.png", "versions.json", "provenance.json", "config.json"):
        assert (wd / f).exists()
    assert main(PRESETS, run, argv=["--set", "iga.arms=nope", "--workdir", str(wd)]) == 2


@pytest.mark.slow
def test_student_starts_from_a_pretrained_checkpoint_and_its_chat_template(qwen3_dir, tmp_path,
                                                                          monkeypatch, capsys):
    """``model.init_from=<tiny Qwen3 with a ChatML template>``: the checkpoint's weights are the
    base student (``pretrain_steps=0``) and its own template renders every prompt the student
    samples and trains on; prompts too long for ``iga.prompt_len`` are one ``error:``."""
    import jax
    import numpy as np

    from experiments.base import main
    from experiments.iga_rules import PRESETS, run
    from lm import hf
    from rl.iga.agents import StudentChat
    from rl.iga.sft import SFTTrainer
    from tokenization.hf import HFTokenizer
    sampled, fits = [], []
    chat_many, fit = StudentChat.chat_many, SFTTrainer.fit

    def spy_chat(self, chats, **kw):
        sampled.append((jax.device_get(self.params), chats, self.encode_prompts(chats)))
        return chat_many(self, chats, **kw)

    def spy_fit(self, params, examples, steps, seed=0):
        fits.append((jax.device_get(params), examples, steps))
        return fit(self, params, examples, steps, seed)

    monkeypatch.setattr(StudentChat, "chat_many", spy_chat)
    monkeypatch.setattr(SFTTrainer, "fit", spy_fit)
    wd = tmp_path / "run"
    sets = [f"model.init_from={qwen3_dir}", "model.max_len=256", "iga.scenarios=forbidden_entity",
            "iga.max_train=4", "iga.pretrain_steps=0", "iga.sft_steps=1", "iga.n_think=0",
            "iga.n_parrot=1", "iga.helper_errors=0.1", "iga.batch_size=8", "iga.seq_len=256",
            "iga.max_new_tokens=8"]  # seq_len: the (unused) hinted pretraining examples fit
    rc = main(PRESETS, run, argv=["--preset", "smoke", "--workdir", str(wd), "--set", *sets,
                                  "iga.prompt_len=112"])
    assert rc == 0
    rows = [json.loads(x) for x in open(wd / "results.jsonl")]
    assert [r["arm"] for r in rows] == ["teacher_naive", "teacher_igp", "base", "plain_sft", "iga"]
    # the starting point is the checkpoint: the pretraining fit (0 steps) starts from it and the
    # base row samples with it, tensor for tensor
    _, ckpt = hf.load(qwen3_dir)
    for params in (fits[0][0], sampled[0][0]):
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ckpt), strict=True):
            np.testing.assert_array_equal(a, b)
    assert fits[0][2] == 0 and [f[2] for f in fits[1:]] == [1, 1]
    # prompts: the checkpoint's ChatML template with the generation prompt, no extra BOS
    tok = HFTokenizer.load(qwen3_dir)
    render = lambda m: tok.apply_chat_template(m, add_generation_prompt=True)  # noqa: E731
    chats, (ids, lens) = sampled[0][1], sampled[0][2]
    first = render(chats[0])
    assert first.startswith("<|im_start|>system\n") and first.endswith("<|im_start|>assistant\n")
    for c, row, n in zip(chats, ids, lens):
        np.testing.assert_array_equal(row[:n], tok.apply_chat_template(c, tokenize=True))
    # SFT pairs are rendered the same way: plain SFT trains on the naive chats of the train
    # queries, and every pretraining prompt is a template render too
    queries = [json.loads(x)["query"] for x in open(wd / "references.jsonl")]
    assert {p for p, _ in fits[1][1]} == {render(Pr.naive(SC.rule, q)) for q in queries}
    assert all(p.startswith("<|im_start|>system\n") and p.endswith("<|im_start|>assistant\n")
               for f in fits for p, _ in f[1])
    bad = tmp_path / "bad"
    assert main(PRESETS, run, argv=["--preset", "smoke", "--workdir", str(bad), "--set", *sets,
                                    "iga.prompt_len=40"]) == 2
    assert "iga.prompt_len=40 < 104 (longest student prompt)" in capsys.readouterr().err
    assert not bad.exists()
