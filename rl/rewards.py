"""Reward functions as plain callables, and the arithmetic task they score.

    prompts, answers = arithmetic_problems(n, rng, digits=(1, 2))   # "12+7=" -> 19
    r = exact_match(["19", " 19 ", "x"], [19, 19, 19])               # [1., 1., 0.]
    r = format_reward(["19", "19 apples"], finished=[True, True])    # [1., 0.]
    r = overlong_penalty(lengths, max_len=20, cache_len=4)           # DAPO soft punishment

Answer parsing (``parse_answer``) is deliberately forgiving: it strips whitespace, an optional
leading ``=``, ignores a trailing period and reads the first signed integer (``"-3"``, ``"+4"``,
``"1,024"`` -> 1024); ``parse_last_answer`` reads the last one (a chat model's answer text,
``"12 + 7 = 19."`` -> 19). The *format* reward is the strict one: the completion must be exactly
an optionally signed integer and must have ended with EOS (not truncated). Rewards are numpy on the
host: they run on decoded strings between the jitted rollout and the jitted update.
"""

from __future__ import annotations

import re

import numpy as np

_INT = re.compile(r"[-+]?\d[\d,]*")
_STRICT = re.compile(r"^-?\d+$")
OPS = ("+", "-")


def parse_answer(text: str) -> int | None:
    """The first integer in ``text`` (commas between digits allowed), or None."""
    s = text.strip().lstrip("=").strip()
    m = _INT.search(s)
    if m is None:
        return None
    digits = m.group(0).replace(",", "")
    try:
        return int(digits)
    except ValueError:
        return None


def parse_last_answer(text: str) -> int | None:
    """The last integer in ``text`` (a chat model's "12 + 7 = 19." reads 19), or None."""
    found = _INT.findall(text)
    if not found:
        return None
    try:
        return int(found[-1].rstrip(",").replace(",", ""))
    except ValueError:
        return None


def exact_match(completions: list[str], answers, last: bool = False) -> np.ndarray:
    """1.0 where the parsed answer (the first integer; the last with ``last``) equals the
    target, else 0.0."""
    parse = parse_last_answer if last else parse_answer
    return np.array([float(parse(c) == int(a)) for c, a in zip(completions, answers)],
                    np.float32)


def format_reward(completions: list[str], finished=None) -> np.ndarray:
    """1.0 for a bare (optionally negative) integer that ended with EOS, else 0.0."""
    fin = [True] * len(completions) if finished is None else list(finished)
    return np.array([float(bool(_STRICT.match(c)) and bool(f)) for c, f in
                     zip(completions, fin)], np.float32)


def overlong_penalty(lengths, max_len: int, cache_len: int) -> np.ndarray:
    """DAPO soft overlong punishment: 0 up to ``max_len - cache_len``, then linear to -1 at
    ``max_len``, -1 beyond."""
    if not 0 < cache_len <= max_len:
        raise ValueError(f"overlong cache_len={cache_len} must be in (0, max_len={max_len}]")
    n = np.asarray(lengths, np.float32)
    soft = max_len - cache_len
    mid = (soft - n) / cache_len
    return np.where(n <= soft, 0.0, np.where(n <= max_len, mid, -1.0)).astype(np.float32)


def arithmetic_reward(completions, answers, finished, *, format_weight: float = 0.1):
    """Exact match plus ``format_weight`` times the format reward (the experiment's reward)."""
    return exact_match(completions, answers) + format_weight * format_reward(completions,
                                                                             finished)


def arithmetic_problems(n: int, rng: np.random.Generator, digits=(1, 2), ops=OPS):
    """``n`` problems ``"a+b="`` / ``"a-b="`` with operands of ``digits`` (inclusive) digits.

    Returns (prompts, answers)."""
    lo, hi = digits
    nd = rng.integers(lo, hi + 1, size=(n, 2))
    a = rng.integers(10 ** (nd[:, 0] - 1) * (nd[:, 0] > 1), 10 ** nd[:, 0])
    b = rng.integers(10 ** (nd[:, 1] - 1) * (nd[:, 1] > 1), 10 ** nd[:, 1])
    op = rng.choice(list(ops), size=n)
    prompts = [f"{x}{o}{y}=" for x, o, y in zip(a, op, b)]
    answers = [int(x + y) if o == "+" else int(x - y) for x, o, y in zip(a, op, b)]
    return prompts, answers


def sorted_fraction(completions: list[str]) -> np.ndarray:
    """Fraction of adjacent digit pairs that are non-decreasing (the preference task's rule);
    0 for completions with fewer than two digits."""
    out = []
    for c in completions:
        d = [int(ch) for ch in c if ch in "0123456789"]  # not "³" (str.isdigit)
        out.append(np.mean([a <= b for a, b in zip(d, d[1:])]) if len(d) > 1 else 0.0)
    return np.array(out, np.float32)
