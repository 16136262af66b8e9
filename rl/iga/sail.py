"""SAIL (Self-Aligned Incremental Learning): the student side of IGA (spec §2.4, §4.4).

One iteration [CODE script/iter.py, src/IGRsample.py]:
1. the student answers every train query once (NAIVE prompt, temperature 0.8);
2. each answer is judged against the teacher's reference; a query with no good answer is a gap;
3. gaps only: ``n_think`` hinted retries by the student (PROPOSE with the graph hint);
4. still failing: helper 0 makes ``n_parrot`` attempts per query, helpers 1.. one each; every
   attempt is a PROPOSE and, if that fails, a PARROT (hint + teacher answer);
5. every good answer becomes a *hint-free* training pair ``(rule, query) -> answer`` -- the
   hinted user turn is replaced by the plain query, so knowledge moves from context to weights;
6. the pairs are added to the cumulative data of iterations 1..k and the student is fine-tuned
   on all of it, from the *base* weights (official, default) or from the last student
   (``continue_training``); then it is evaluated on the held-out test split.
Every good sample is kept, duplicates included, so gaps get up to ``n_think``/``n_parrot`` copies
while solved queries keep their single sample (the official curriculum on gaps).

DEVIATION (spec §2.3, §4.2): the official gap check is the *answering model's own* alignment
check against the reference ("Is this idea aligned with your rationale? True/False"). A tiny GPT
cannot evaluate itself, so ``make_judge`` compares a text-only decision of the answer (e.g. refuse
vs answer, which slot entity it names) with that of the teacher's reference, optionally flipped
with probability ``noise``. The reference is the teacher's IGP answer (paper: annotation-free;
the official code uses the human weak annotation here). The exact test checkers are never called.
Ablations: ``use_hint=False`` (STaR-like: retries without the hint), ``use_helpers=False``,
``use_parrot=False``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os

from rl.iga import prompts as Pr


@dataclasses.dataclass(frozen=True)
class Item:
    """A train query with the teacher's IGP output (computed once)."""

    key: str
    rule: str
    query: str
    hint: str  # graph edge lines joined by " ; "
    reference: str  # the teacher's IGP answer


@dataclasses.dataclass(frozen=True)
class Pair:
    """A hint-free SFT example and where its answer came from."""

    key: str
    rule: str
    query: str
    answer: str
    source: str  # "student" | "hinted_student" | "<helper>" | "<helper>_parrot"
    iteration: int


@dataclasses.dataclass(frozen=True)
class SAILCfg:
    iterations: int = 3  # official MAX_ITER = 4
    n_think: int = 5
    n_parrot: int = 10
    temperature: float = 0.8
    use_hint: bool = True
    use_helpers: bool = True
    use_parrot: bool = True
    continue_training: bool = False

    def __post_init__(self):
        if self.iterations < 1 or self.n_think < 0 or self.n_parrot < 1:
            raise ValueError(f"bad SAIL config {self}: iterations >= 1, n_think >= 0, "
                             "n_parrot >= 1")


def make_judge(decision, noise: float = 0.0, seed: int = 0):
    """``judge(item, answer) -> bool``: non-empty and same decision as the reference."""
    import hashlib

    import numpy as np

    def judge(item: Item, answer: str) -> bool:
        ok = bool(answer.strip()) and decision(item.rule, answer) == decision(item.rule,
                                                                              item.reference)
        if noise > 0:
            h = hashlib.sha256(f"{seed}|{item.key}|{answer}".encode()).digest()
            if np.random.default_rng(int.from_bytes(h[:8], "little")).random() < noise:
                ok = not ok
        return ok
    return judge


def expand(items: list, copies: int) -> list:
    """Each item repeated ``copies`` times, in order (the gap multiplication)."""
    return [it for it in items for _ in range(copies)]


def _sample(model, chats: list, temperature: float, seed: int) -> list[str]:
    if hasattr(model, "chat_many"):
        return model.chat_many(chats, temperature=temperature, seed=seed)
    return [Pr.parse_answer(model.chat(c, n=1, temperature=temperature, seed=seed + i)[0])
            for i, c in enumerate(chats)]


def collect(student, helpers, items: list[Item], judge, cfg: SAILCfg, *, iteration: int,
            seed: int = 0) -> tuple[list[Pair], dict]:
    """Steps 1-5 of one iteration. Returns the new pairs and bookkeeping stats."""
    good: dict[str, list[tuple[str, str]]] = {it.key: [] for it in items}
    answers = _sample(student, [Pr.naive(it.rule, it.query) for it in items], cfg.temperature,
                      seed)
    for it, a in zip(items, answers):
        if judge(it, a):
            good[it.key].append((a, "student"))
    gaps = [it for it in items if not good[it.key]]
    stats = {"iteration": iteration, "n_queries": len(items), "n_gaps": len(gaps)}

    think = expand(gaps, cfg.n_think)
    chats = [Pr.propose(it.rule, it.query, it.hint) if cfg.use_hint else
             Pr.naive(it.rule, it.query) for it in think]
    src = "hinted_student" if cfg.use_hint else "student_retry"
    for it, a in zip(think, _sample(student, chats, cfg.temperature, seed + 1)):
        if judge(it, a):
            good[it.key].append((a, src))
    still = [it for it in gaps if not good[it.key]]
    stats["n_gaps_after_think"] = len(still)

    for h, helper in enumerate(helpers if cfg.use_helpers else []):
        m = cfg.n_parrot if h == 0 else 1
        name = getattr(helper, "name", f"helper{h}")
        for it in still:
            s = seed + 1000 * (h + 1)
            props = [Pr.parse_answer(t) for t in helper.chat(
                Pr.propose(it.rule, it.query, it.hint), n=m, temperature=cfg.temperature,
                seed=s)]
            bad = 0
            for a in props:
                if judge(it, a):
                    good[it.key].append((a, name))
                else:
                    bad += 1
            if bad and cfg.use_parrot:
                for a in helper.chat(Pr.parrot(it.rule, it.query, it.hint, it.reference), n=bad,
                                     temperature=cfg.temperature, seed=s + 1):
                    a = Pr.parse_answer(a)
                    if judge(it, a):
                        good[it.key].append((a, f"{name}_parrot"))
        still = [it for it in still if not good[it.key]]
    stats["n_unsolved"] = len(still)

    pairs = [Pair(it.key, it.rule, it.query, a, s, iteration)
             for it in items for a, s in good[it.key]]
    stats["n_pairs"] = len(pairs)
    stats["sources"] = dict(collections.Counter(p.source for p in pairs))
    solved = [k for k, v in good.items() if v]
    stats["diversity"] = (sum(len({a for a, _ in good[k]}) for k in solved) / len(solved)
                          if solved else 0.0)
    return pairs, stats


def training_chats(pairs: list[Pair]) -> list[tuple[list[dict], str]]:
    """Hint-free ``(messages, answer)`` examples: system rule + the raw query only."""
    return [(Pr.naive(p.rule, p.query), p.answer) for p in pairs]


def regressions(prev: dict[str, bool] | None, cur: dict[str, bool]) -> int:
    """Queries that passed before and fail now."""
    return 0 if prev is None else sum(1 for k, v in prev.items() if v and not cur.get(k, False))


def relative_improvement(before: float, after: float) -> float | None:
    """``(after - before) / before * 100`` (paper convention); None when ``before == 0``."""
    return None if before == 0 else (after - before) / before * 100.0


def run(base_params, items: list[Item], *, make_student, helpers, judge, finetune, evaluate,
        cfg: SAILCfg, seed: int = 0, on_iteration=None) -> tuple[object, list[dict]]:
    """The outer loop. ``make_student(params) -> ChatModel``; ``finetune(init_params, pairs,
    iteration) -> params``; ``evaluate(params) -> {"pass": {key: bool}, ...metrics}``.
    Returns the final params and one record per iteration."""
    data: list[Pair] = []
    params, prev, history = base_params, None, []
    for k in range(1, cfg.iterations + 1):
        pairs, stats = collect(make_student(params), helpers, items, judge, cfg, iteration=k,
                               seed=seed * 100_003 + 7919 * k)
        data = data + pairs
        start = params if cfg.continue_training else base_params
        params = finetune(start, data, k)
        ev = evaluate(params)
        rec = {**stats, "n_data": len(data), "regressions": regressions(prev, ev["pass"]),
               **{k2: v for k2, v in ev.items() if k2 != "pass"}}
        prev = ev["pass"]
        history.append(rec)
        if on_iteration is not None:
            on_iteration(rec)
    return params, history


def write_jsonl_atomic(path: str, records: list[dict]):
    """All records or nothing (``lm.metrics.write_atomic``)."""
    from lm.metrics import write_atomic
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def append_jsonl(path: str, records: list[dict]):
    """Append ``records`` in one write and flush (a kill leaves whole lines or none)."""
    with open(path, "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in records))
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str) -> list[dict]:
    """The whole lines of ``path`` ([] when missing; a torn last line is dropped)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def build_references(teacher, queries: list[tuple[str, str, str]], *, n_refine: int = 1,
                     path: str | None = None) -> list[Item]:
    """The teacher's IGP (graph hint + reference answer) for every ``(key, rule, query)``.
    Any teacher failure (e.g. ``EndpointError``) propagates before anything is written."""
    from rl.iga.igp import igp
    items = []
    for i, (key, rule, query) in enumerate(queries):
        res = igp(teacher, rule, query, n_refine=n_refine, seed=i)
        items.append(Item(key, rule, query, res.hint, res.answer))
    if path is not None:
        write_jsonl_atomic(path, [dataclasses.asdict(it) for it in items])
    return items
