"""Chat prompts as ids: a checkpoint's own chat template, else a compact render.

    fmt = chat_format(tok)   # tok: lm.pretrained.CheckpointTokenizer, or a byte/BPE one
    ids = fmt.encode(tok, [{"role": "system", "content": "..."}, {"role": "user", "content": q}])

``chat_format(tok)`` picks the format once per run: a loaded checkpoint's chat template
(``tokenization.hf.HFTokenizer.apply_chat_template`` with ``add_generation_prompt=True``, rendered
as transformers renders it) when the tokenizer has one, else the compact
``<bos> <sys> system <user content> <a>`` text. Used by the IGA student (``rl.iga.agents``) and by
the arithmetic task's chat prompts (``rl.arithmetic``), so training and sampling see one format.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np


def compact_render(messages) -> str:
    """``<sys> system <user content> <a>``: the word-level student's compact chat text."""
    system = " ".join(m["content"] for m in messages if m["role"] == "system")
    user = " ".join(m["content"] for m in messages if m["role"] == "user")
    return f"<sys> {system} {user} <a>"


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """How the student's chats become prompt ids: ``render(messages) -> text``, then the
    tokenizer's ids with its BOS in front when ``add_bos`` (off for a chat template, which writes
    its own specials). Used for sampling (``StudentChat``) and the SFT pairs alike."""

    name: str
    render: Callable[[list[dict]], str]
    add_bos: bool = True

    def encode(self, tok, messages) -> np.ndarray:
        return tok.encode(self.render(messages), add_bos=self.add_bos)


COMPACT = ChatFormat("compact", compact_render)


def chat_format(tok) -> ChatFormat:
    """The prompt format for ``tok``: a loaded checkpoint's own chat template (its ``.hf``
    tokenizer, ``lm.pretrained.CheckpointTokenizer``) when it has one; else the compact render,
    framed the checkpoint's way (its BOS only when its post-processor adds one) or, for the
    experiment's own tokenizers, with ``<bos>`` as always."""
    hf = getattr(tok, "hf", None)
    if hf is None:
        return COMPACT
    if hf.chat_templates:
        return ChatFormat("chat_template", functools.partial(hf.apply_chat_template,
                                                             add_generation_prompt=True),
                          add_bos=False)
    return ChatFormat("compact", compact_render, add_bos=tok.prompt_bos)
