"""The DLR arithmetic tasks (E0 ``addsub``, E1 ``hidden``) asked through a chat model's template.

    task = ChatArith(tok, digits=2, system="You are a helpful assistant.")
    data = make("hidden", 512, seed=0, digits=2)     # a, b, op, c, carry
    enc = task.encode(data)                          # tokens [n, W], mask [n, W-1], prompt width P
    for batch in batches(enc, 8, steps=64, seed=0): ...
    correct = task.exact(generated_NxT, enc)         # exact match up to and incl. <|im_end|>

The same two tasks as ``rl.dlr_tasks`` (spec ``dlr_gds.md`` §4.4), written for a pretrained chat
model: operands have exactly ``digits`` digits (no zero padding; the leading digit is 1-9), the
question is ``"What is a + b? Answer with the number only."`` (``addsub``) or ``"What is a ? b?
..."`` with the operator hidden (``hidden``: ``+`` when a's leading digit is even, else ``-``;
subtraction draws ``b <= a``), rendered with the checkpoint's chat template after a short system
message; the answer is the plain decimal number (most significant digit first, as the model
writes numbers) followed by the EOS. With single-digit tokens (SmolLM2, Llama 3, Qwen) every
prompt has the same width ``P``, which ``rl.dlr_generate`` needs (absolute chunk positions, no
left padding); a tokenizer that merges digits is refused. Sequences are right-padded with the pad
id to ``W = P + digits + 2`` (the longest answer + EOS); the loss mask covers the answer and EOS.

Ground truth for the code analysis: the carry/borrow into each answer digit (least significant
first, as ``rl.dlr_tasks``) and the operator.
"""

from __future__ import annotations

import numpy as np

from lm.chat import chat_format

QUESTION = {"addsub": "What is {a} {op} {b}? Answer with the number only.",
            "hidden": "What is {a} ? {b}? Answer with the number only."}
TASKS = tuple(QUESTION)


def make(task: str, n: int, seed: int, digits: int) -> dict:
    """``n`` problems: a, b, op (0 '+', 1 '-'), c, carry [n, digits + 1] (into digit j, lsd
    first)."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}")
    rng = np.random.default_rng(seed)
    lo, hi = 10 ** (digits - 1), 10 ** digits
    a = rng.integers(lo, hi, n)
    b = rng.integers(lo, hi, n)
    if task == "hidden":  # keep a (it carries the rule); b <= a for subtraction
        op = ((a // lo) % 2).astype(np.int64)
        b = np.where(op == 1, lo + (rng.random(n) * (a - lo + 1)).astype(np.int64), b)
    else:
        op = rng.integers(0, 2, n)
        a, b = np.where(op == 1, np.maximum(a, b), a), np.where(op == 1, np.minimum(a, b), b)
    c = np.where(op == 0, a + b, a - b)
    n_ans = digits + 1
    ad = (a[:, None] // 10 ** np.arange(n_ans)[None]) % 10  # least significant first
    bd = (b[:, None] // 10 ** np.arange(n_ans)[None]) % 10
    carry = np.zeros((n, n_ans), np.int64)
    for j in range(1, n_ans):
        s = np.where(op == 0, ad[:, j - 1] + bd[:, j - 1] + carry[:, j - 1],
                     ad[:, j - 1] - bd[:, j - 1] - carry[:, j - 1])
        carry[:, j] = np.where(op == 0, s >= 10, s < 0)
    return {"task": task, "a": a, "b": b, "op": op, "c": c, "carry": carry}


class ChatArith:
    """Encodes problems through ``tok``'s chat template (``lm.chat.chat_format``)."""

    def __init__(self, tok, *, digits: int, system: str | None = None):
        self.tok, self.digits, self.system = tok, digits, system
        self.fmt = chat_format(tok)
        self.n_new = digits + 2  # longest answer (digits + 1) + EOS
        for d in "0123456789":
            if len(tok.encode(d * 3)) != 3:
                raise ValueError("the tokenizer merges digits: prompts would not have one width")

    def prompt(self, task: str, a: int, b: int, op: int) -> np.ndarray:
        q = QUESTION[task].format(a=a, b=b, op="+-"[op])
        sys_ = [] if self.system is None else [{"role": "system", "content": self.system}]
        return self.fmt.encode(self.tok, sys_ + [{"role": "user", "content": q}])

    def encode(self, data: dict) -> dict:
        """``tokens`` [n, W] (prompt, answer, EOS, pad), ``mask`` [n, W-1] on answer + EOS
        targets, ``P`` (prompt width), ``answer`` [n, n_new] (answer + EOS, pad after)."""
        prompts = [self.prompt(data["task"], int(a), int(b), int(o))
                   for a, b, o in zip(data["a"], data["b"], data["op"])]
        P = len(prompts[0])
        if any(len(p) != P for p in prompts):
            raise ValueError("chat prompts differ in length (a digit-merging tokenizer?)")
        n, pad = len(prompts), self.tok.pad_id
        ans = np.full((n, self.n_new), pad, np.int32)
        tokens = np.full((n, P + self.n_new), pad, np.int32)
        mask = np.zeros((n, P + self.n_new - 1), np.float32)
        n_ans = np.zeros(n, np.int32)
        for i, (p, c) in enumerate(zip(prompts, data["c"])):
            a = self.tok.encode(str(int(c)), add_eos=True)
            ans[i, : len(a)], n_ans[i] = a, len(a)
            tokens[i, :P], tokens[i, P: P + len(a)] = p, a
            mask[i, P - 1: P - 1 + len(a)] = 1.0
        return {"tokens": tokens, "mask": mask, "P": P, "answer": ans, "n_ans": n_ans,
                "op": data["op"], "carry": data["carry"]}

    def exact(self, gen_NxT: np.ndarray, enc: dict) -> np.ndarray:
        """1.0 where the greedy tokens equal the answer and its EOS (later tokens ignored)."""
        gen = np.asarray(gen_NxT)
        keep = np.arange(self.n_new)[None] < enc["n_ans"][:, None]
        return ((gen[:, : self.n_new] == enc["answer"]) | ~keep).all(1).astype(np.float32)

    def digit_acc(self, gen_NxT: np.ndarray, enc: dict) -> float:
        gen = np.asarray(gen_NxT)[:, : self.n_new]
        keep = np.arange(self.n_new)[None] < enc["n_ans"][:, None]
        return float(((gen == enc["answer"]) & keep).sum() / keep.sum())


def to_batch(enc: dict, idx) -> dict:
    t = enc["tokens"][idx]
    return {"inputs": t[:, :-1], "targets": t[:, 1:], "mask": enc["mask"][idx]}


def batches(enc: dict, batch_size: int, steps: int, seed: int):
    """``steps`` batches of shuffled epochs (the order ``rl.dlr_tasks.batches`` draws)."""
    rng = np.random.default_rng(seed)
    n, order = len(enc["tokens"]), np.array([], np.int64)
    for _ in range(steps):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:batch_size], order[batch_size:]
        yield to_batch(enc, idx)


def answer_chunks(enc: dict, chunk: int, n_chunks: int) -> list[int]:
    """Chunks whose first position predicts a token of the answer region (answer or EOS)."""
    P, W = enc["P"], enc["tokens"].shape[1]
    return [m for m in range(n_chunks) if P - 1 <= m * chunk < W - 1]


def carry_labels(enc: dict, chunk: int, chunks: list[int]) -> np.ndarray:
    """Per example and answer chunk: the carry/borrow into the answer digit the chunk's first
    position predicts, -1 where that token is not a digit (EOS, pad)."""
    P = enc["P"]
    out = np.full((len(enc["tokens"]), len(chunks)), -1, np.int64)
    n_dig = enc["n_ans"] - 1
    for k, m in enumerate(chunks):
        t = m * chunk + 1 - P  # offset of the predicted token in the answer
        j = n_dig - 1 - t  # its digit index, least significant first
        ok = (t >= 0) & (j >= 0)
        out[ok, k] = enc["carry"][ok, np.where(ok, j, 0)[ok]]
    return out
