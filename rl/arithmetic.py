"""The arithmetic task as a model sees it: prompt ids (raw or through a chat template), answers.

    fmt = ArithmeticFormat.raw(tok)                                  # "12+7=" as it is
    fmt = ArithmeticFormat.chat(tok, system="You are a helpful assistant.", width=48)
    x_NxP, len_N = fmt.encode(["12+7=", "3-5="])
    fmt.score(["12 + 7 = 19", "2"], [19, -2])                         # [1., 0.]
    acc, mean_len = greedy_accuracy(graphdef, params, items, max_new=12, fmt=fmt)

``rl.rewards.arithmetic_problems`` draws problems ``"a+b="``; the raw format feeds that text to a
model trained on it (the byte GPTs of ``experiments.grpo_arithmetic``), answer = the first
integer of the completion. The chat format asks a pretrained chat model
``"What is a + b? Answer with the number only."`` through the checkpoint's own chat template
(``lm.chat.chat_format``), after an optional short system message, and reads the answer as the
last integer of the assistant's text. Both give fixed-width right-padded ids (one compiled
sampler for every batch). ``greedy_accuracy`` is the one evaluator the RL and preference
experiments use before and after training.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from lm.chat import chat_format
from lm.pretrained import prompt_ids
from lm.sample import SampleCfg, generate
from rl import rewards as RW

QUESTION = "What is {a} {op} {b}? Answer with the number only."
_PROBLEM = re.compile(r"^\s*(-?\d+)\s*([+-])\s*(-?\d+)\s*=\s*$")


def question(problem: str) -> str:
    """``"12+7="`` -> ``"What is 12 + 7? Answer with the number only."``."""
    m = _PROBLEM.match(problem)
    if m is None:
        raise ValueError(f"not an arithmetic problem 'a+b=' / 'a-b=': {problem!r}")
    return QUESTION.format(a=m.group(1), op=m.group(2), b=m.group(3))


@dataclasses.dataclass(frozen=True)
class ArithmeticFormat:
    """How problems become prompt ids of ``width`` tokens and how answers are read."""

    tok: object
    width: int
    system: str | None = None  # chat only; None = no system message (the template's default)
    chat_render: object = None  # lm.chat.ChatFormat, or None for the raw problem text
    last: bool = False  # answer = the last integer of the text (chat), else the first

    @classmethod
    def raw(cls, tok, width: int = 8) -> ArithmeticFormat:
        """The problem text as it is (plus the checkpoint's BOS when its tokenizer adds one);
        longer ids are cut to ``width`` (+1 for that BOS)."""
        return cls(tok, width + int(getattr(tok, "prompt_bos", False)))

    @classmethod
    def chat(cls, tok, *, width: int, system: str | None = None) -> ArithmeticFormat:
        return cls(tok, width, system, chat_format(tok), last=True)

    def messages(self, problem: str) -> list[dict]:
        sys_ = [] if self.system is None else [{"role": "system", "content": self.system}]
        return sys_ + [{"role": "user", "content": question(problem)}]

    def ids(self, problem: str) -> np.ndarray:
        if self.chat_render is None:
            return prompt_ids(self.tok, problem)[: self.width]
        ids = self.chat_render.encode(self.tok, self.messages(problem))
        if len(ids) > self.width:
            raise ValueError(f"the chat prompt for {problem!r} has {len(ids)} tokens > "
                             f"prompt width {self.width}")
        return ids

    def encode(self, problems) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ``[N, width]`` int32 prompt ids and their lengths ``[N]``."""
        out = np.full((len(problems), self.width), self.tok.pad_id, np.int32)
        lens = np.zeros(len(problems), np.int32)
        for i, p in enumerate(problems):
            ids = self.ids(p)
            out[i, : len(ids)], lens[i] = ids, len(ids)
        return out, lens

    def score(self, texts, answers) -> np.ndarray:
        """Exact match of the parsed answer (first or last integer) per completion."""
        return RW.exact_match(texts, answers, last=self.last)

    def sample_cfg(self, max_new: int, temperature: float = 0.0) -> SampleCfg:
        """Sampling that stops at the tokenizer's EOS (and any other end-of-turn id)."""
        tok = self.tok
        stop = tuple(i for i in getattr(tok, "eos_ids", ()) if i != tok.eos_id)
        return SampleCfg(max_new_tokens=max_new, temperature=temperature, eos_id=tok.eos_id,
                         pad_id=tok.pad_id, stop_ids=stop)


def problem_sets(train_pool: int, eval_n: int, digits, long_digits, seed: int):
    """``(train, held, long)`` lists of ``(problem, answer)``: ``train_pool + 2 eval_n`` draws of
    ``digits`` operands, deduplicated; the first ``eval_n`` distinct problems are the held-out
    in-distribution set, the next ``train_pool`` the training pool (disjoint), then ``eval_n``
    problems with ``long_digits`` operands."""
    rng = np.random.default_rng(seed)
    pool = dict(zip(*RW.arithmetic_problems(train_pool + eval_n * 2, rng, digits)))
    items = list(pool.items())
    held, train = items[:eval_n], items[eval_n: eval_n + train_pool]
    long_ = list(zip(*RW.arithmetic_problems(eval_n, rng, long_digits)))
    return train, held, long_


def completions(out: dict, tok) -> list[str]:
    """Decoded completions of a ``generate`` result (specials dropped by ``tok.decode``)."""
    toks, n = np.asarray(out["tokens_BxT"]), np.asarray(out["lengths_B"])
    return [tok.decode(t[:k]) for t, k in zip(toks, n)]


def greedy_accuracy(graphdef, params, items, max_new: int, fmt: ArithmeticFormat,
                    batch: int = 0) -> tuple[float, float]:
    """Greedy exact-match accuracy on ``items`` = [(problem, answer)] and the mean completion
    length (tokens incl. EOS); in chunks of ``batch`` rows (0 = all at once; the last chunk is
    padded so one program serves every chunk)."""
    problems, answers = [p for p, _ in items], [a for _, a in items]
    x, lens = fmt.encode(problems)
    scfg = fmt.sample_cfg(max_new)
    B = batch or len(items)
    texts, n_all = [], []
    for s in range(0, len(items), B):
        k = min(B, len(items) - s)
        bx = np.full((B, x.shape[1]), fmt.tok.pad_id, np.int32)
        bl = np.ones((B,), np.int32)
        bx[:k], bl[:k] = x[s:s + k], lens[s:s + k]
        out = generate(graphdef, params, bx, bl, scfg)
        texts += completions(out, fmt.tok)[:k]
        n_all += list(np.asarray(out["lengths_B"])[:k])
    return float(fmt.score(texts, answers).mean()), float(np.mean(n_all))
