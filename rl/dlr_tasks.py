"""Generated arithmetic tasks for DLR vs SFT, and the measurements of spec §4.4 (E0, E1).

Tokens: digits 0-9 are ids 0-9, ``+`` 10, ``-`` 11, ``?`` 12, ``=`` 13. A sequence is the prompt
``aaaaaa<op>bbbbbb=`` (six-digit operands, zero padded) then the 7-digit answer written least
significant digit first (so a carry/borrow is local to the digit it enters). Subtraction draws
``a >= b``. Pairs are ``inputs = seq[:-1]``, ``targets = seq[1:]``, ``mask`` on answer tokens.

- E0 ``addsub``: the operator is shown (``+`` or ``-``, half each).
- E1 ``hidden``: the operator is shown as ``?``; it is ``+`` when the leading digit of ``a`` is
  even, else ``-`` (a hidden rule the router can read: ``a`` precedes every answer chunk).
Ground truth for the code-vs-mechanism analysis: the carry (addition) or borrow (subtraction)
into every answer digit, and the operator.
"""

from __future__ import annotations

import numpy as np

from lm.stats import bootstrap_ci  # noqa: F401  (moved to lm.stats; kept importable here)

DIGITS, PLUS, MINUS, HIDDEN, EQ = 10, 10, 11, 12, 13
VOCAB = 16  # 14 used, padded
N_DIG, ANS = 6, 7
PROMPT = 2 * N_DIG + 2  # 14
SEQ = PROMPT + ANS  # 21
TASKS = ("addsub", "hidden")


def _digits(x: np.ndarray, n: int) -> np.ndarray:
    """[B] ints -> [B, n] digits, most significant first."""
    return (x[:, None] // 10 ** np.arange(n - 1, -1, -1)[None, :]) % 10


def make(task: str, n: int, seed: int) -> dict:
    """``n`` examples of ``task``: tokens [n, SEQ], op [n] (0 '+', 1 '-'), carry [n, ANS]."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 10**N_DIG, n)
    b = rng.integers(0, 10**N_DIG, n)
    if task == "hidden":
        op = (_digits(a, N_DIG)[:, 0] % 2).astype(np.int64)  # even leading digit -> '+'
    else:
        op = rng.integers(0, 2, n)
    if task == "hidden":  # keep a (it carries the rule); draw b <= a for subtraction
        b = np.where(op == 1, (rng.random(n) * (a + 1)).astype(np.int64), b)
    else:
        a, b = np.where(op == 1, np.maximum(a, b), a), np.where(op == 1, np.minimum(a, b), b)
    c = np.where(op == 0, a + b, a - b)
    ad, bd = _digits(a, ANS)[:, ::-1], _digits(b, ANS)[:, ::-1]  # least significant first
    carry = np.zeros((n, ANS), np.int64)  # carry/borrow INTO digit j
    for j in range(1, ANS):
        s = np.where(op == 0, ad[:, j - 1] + bd[:, j - 1] + carry[:, j - 1],
                     ad[:, j - 1] - bd[:, j - 1] - carry[:, j - 1])
        carry[:, j] = np.where(op == 0, s >= 10, s < 0)
    sym = np.where(op == 0, PLUS, MINUS) if task == "addsub" else np.full(n, HIDDEN)
    toks = np.concatenate([_digits(a, N_DIG), sym[:, None], _digits(b, N_DIG),
                           np.full((n, 1), EQ), _digits(c, ANS)[:, ::-1]], axis=1)
    return {"tokens": toks.astype(np.int32), "op": op, "carry": carry}


def to_batch(tokens: np.ndarray) -> dict:
    """LM pairs with the loss on answer tokens only."""
    mask = np.zeros((len(tokens), SEQ - 1), np.float32)
    mask[:, PROMPT - 1:] = 1.0
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


def batches(data: dict, batch_size: int, steps: int, seed: int):
    """``steps`` batches of shuffled epochs over ``data``."""
    rng = np.random.default_rng(seed)
    n, order = len(data["tokens"]), np.array([], np.int64)
    for _ in range(steps):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:batch_size], order[batch_size:]
        yield to_batch(data["tokens"][idx])


def answer_chunk_labels(data: dict, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """For every chunk that starts inside the answer: its index [n_chunks] and, per example, the
    carry/borrow into the first answer digit that chunk predicts [n, n_chunks]. Input position p
    predicts token p + 1, i.e. answer digit p + 1 - PROMPT."""
    starts = [s for s in range(0, SEQ - 1, chunk) if PROMPT - 1 <= s]
    digit = [s + 1 - PROMPT for s in starts]
    return np.array([s // chunk for s in starts]), data["carry"][:, digit]


def mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """Plug-in I(x; y) in bits of two integer label arrays (same shape)."""
    x, y = np.ravel(x), np.ravel(y)
    _, xi = np.unique(x, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    joint = np.zeros((xi.max() + 1, yi.max() + 1))
    np.add.at(joint, (xi, yi), 1.0)
    joint /= joint.sum()
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return max(0.0, float((joint[nz] * np.log2(joint[nz] / (px @ py)[nz])).sum()))


def entropy_bits(y: np.ndarray) -> float:
    _, counts = np.unique(np.ravel(y), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())
