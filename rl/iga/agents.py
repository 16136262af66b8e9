"""Chat models behind one protocol: an OpenAI-compatible client, the offline rule teacher and
scripted helpers, and ``StudentChat`` (the local JAX GPT), so one loop drives local and remote.

    chat(messages, *, n=1, temperature=0.8, max_tokens=128, seed=0) -> list[str]   # n replies

- ``OpenAICompatClient(EndpointCfg)`` uses the ``openai`` SDK (optional extra ``[iga]``), key from
  the environment variable ``cfg.api_key_env``; the SDK's own retries are off and this class
  retries connection errors, timeouts, 429 and 5xx with exponential backoff, then raises one
  ``EndpointError`` naming the URL. A reply that is not JSON / has no choices is an
  ``EndpointError`` at once (no retry). Official models [CODE]: Claude 3.5 Sonnet teacher, vLLM
  helpers; any OpenAI-compatible server works here.
- ``RuleTeacher(world)`` and ``ScriptedHelper(world, style, error_rate)`` [INFERRED, spec §4.2]
  read the prompt text with ``prompts.parse_prompt`` and answer from a ``world`` (the scenario
  knowledge, ``experiments.iga_scenarios.World``). The teacher is deterministic: its naive prompt
  uses surface keyword matching, its IGP prompts build / enhance / answer from the graph. A helper
  follows the graph in a PROPOSE hint but errs with probability ``error_rate`` (answers as if
  there were no rule); PARROT paraphrases the teacher's answer in the helper's style with
  probability ``parrot_fidelity``. Randomness: ``seed`` x query text x sample index.
- ``StudentChat`` renders a chat with its ``ChatFormat`` and samples with ``lm.sample.generate``
  (KV cache), padded to fixed shapes so one compiled program serves every call. ``chat_format(tok)``
  picks the format once per run: a checkpoint's own chat template (``tokenization.hf``,
  ``add_generation_prompt=True``) when the tokenizer is a loaded checkpoint's and has one, else
  the compact ``<bos> <sys> rule <user content> <a>`` of the word-level student. The SFT pairs
  are rendered with the same format, so training and sampling see one prompt format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Protocol

import numpy as np

from lm.chat import COMPACT, ChatFormat, chat_format, compact_render  # noqa: F401 (moved)
from rl.iga import graph as G
from rl.iga import prompts as Pr


class ChatModel(Protocol):
    def chat(self, messages: list[dict], *, n: int = 1, temperature: float = 0.8,
             max_tokens: int = 128, seed: int = 0) -> list[str]: ...


class EndpointError(RuntimeError):
    """The chat endpoint failed (unreachable, timed out, HTTP error, malformed reply)."""


@dataclasses.dataclass(frozen=True)
class EndpointCfg:
    base_url: str = ""  # e.g. http://host:8000/v1 ; "" = use the offline agents
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0  # seconds per request
    retries: int = 3  # extra attempts after the first
    backoff: float = 1.0  # sleep backoff * 2**attempt between attempts


class OpenAICompatClient:
    """``/chat/completions`` through the ``openai`` SDK with timeouts and retries."""

    def __init__(self, cfg: EndpointCfg):
        if not cfg.base_url or not cfg.model:
            raise ValueError("EndpointCfg needs base_url and model "
                             "(e.g. --set iga.teacher.base_url=http://host:8000/v1 "
                             "iga.teacher.model=NAME)")
        try:
            import openai
        except ImportError as e:
            raise ImportError("the OpenAI-compatible client needs the optional extra: "
                              "pip install 'openai>=1.0' (extra [iga])") from e
        self.cfg, self._openai = cfg, openai
        self.client = openai.OpenAI(base_url=cfg.base_url,
                                    api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
                                    timeout=cfg.timeout, max_retries=0)

    def chat(self, messages, *, n=1, temperature=0.8, max_tokens=128, seed=0) -> list[str]:
        oa, cfg = self._openai, self.cfg
        retryable = (oa.APIConnectionError, oa.RateLimitError, oa.InternalServerError)
        last = None
        for attempt in range(cfg.retries + 1):
            try:
                resp = self.client.chat.completions.create(
                    model=cfg.model, messages=messages, n=n, temperature=temperature,
                    max_tokens=max_tokens, seed=seed)
                return self._texts(resp, n)
            except retryable as e:
                last = e
                if attempt < cfg.retries:
                    time.sleep(cfg.backoff * 2 ** attempt)
            except oa.APIStatusError as e:
                raise EndpointError(f"{cfg.base_url}: HTTP {e.status_code}: {e.message}") from e
            except (oa.APIResponseValidationError, ValueError, AttributeError, TypeError) as e:
                raise EndpointError(f"{cfg.base_url}: malformed reply ({type(e).__name__}: "
                                    f"{e})") from e
        kind = "timed out" if isinstance(last, oa.APITimeoutError) else "unreachable or failing"
        raise EndpointError(f"{cfg.base_url} {kind} after {cfg.retries + 1} attempts: "
                            f"{type(last).__name__}: {last}") from last

    @staticmethod
    def _texts(resp, n: int) -> list[str]:
        choices = getattr(resp, "choices", None)
        if isinstance(resp, str | bytes) or not choices:
            raise ValueError(f"no choices in reply {str(resp)[:120]!r}")
        out = [c.message.content for c in choices]
        if not all(isinstance(t, str) for t in out):
            raise ValueError("a choice has no text content")
        return out


def _rng(seed: int, *parts) -> np.random.Generator:
    h = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


def _hint_lines(hint: str) -> list[str]:
    return [x.strip() for x in hint.replace("\n", " ; ").split(" ; ") if x.strip()]


class RuleTeacher:
    """Deterministic offline teacher: naive (surface) answers, IGP graphs and graph answers."""

    def __init__(self, world):
        self.world = world

    def chat(self, messages, *, n=1, temperature=0.8, max_tokens=128, seed=0) -> list[str]:
        p, w = Pr.parse_prompt(messages), self.world
        kind = p["kind"]
        if kind == "graph":
            out = w.initial_graph(p["rule"], p["query"]).dumps()
        elif kind == "enhance":
            g = G.parse_graph(p["graph"])
            out = G.enhance(g).dumps() if g is not None else "I could not read the graph."
        elif kind == "answer":
            out = w.answer(p["rule"], p["query"],
                           w.restricted_by_hint(p["rule"], p["query"], _hint_lines(p["hint"])), 0)
        elif kind in ("naive_teacher", "naive"):
            out = w.naive_answer(p["rule"], p["query"])
        elif kind == "self_check":
            out = "Yes" if w.self_check(p["rule"], p["response"]) else "No"
        else:
            raise ValueError(f"RuleTeacher does not answer {kind} prompts")
        return [out] * n


class ScriptedHelper:
    """Offline helper with its own phrasing ``style`` and ``error_rate`` (spec §4.2)."""

    def __init__(self, world, style: int, error_rate: float, parrot_fidelity: float = 0.95,
                 name: str = ""):
        if not 0.0 <= error_rate <= 1.0 or not 0.0 <= parrot_fidelity <= 1.0:
            raise ValueError("error_rate and parrot_fidelity must lie in [0, 1]")
        self.world, self.style, self.error_rate = world, style, error_rate
        self.parrot_fidelity, self.name = parrot_fidelity, name or f"helper{style}"

    def chat(self, messages, *, n=1, temperature=0.8, max_tokens=128, seed=0) -> list[str]:
        p, w = Pr.parse_prompt(messages), self.world
        rule, q = p["rule"], p["query"]
        out = []
        for i in range(n):
            u = _rng(seed, self.name, q, i).random()
            if p["kind"] == "propose":
                follow = w.restricted_by_hint(rule, q, _hint_lines(p["hint"]))
                out.append(w.answer(rule, q, follow and u >= self.error_rate, self.style))
            elif p["kind"] == "parrot":
                ref_refuses = w.decision(rule, p["prev"])[0]
                ok = u < self.parrot_fidelity
                out.append(w.answer(rule, q, ref_refuses and ok, self.style))
            elif p["kind"] == "naive":
                out.append(w.answer(rule, q, False, self.style))
            else:
                raise ValueError(f"ScriptedHelper does not answer {p['kind']} prompts")
        return out


class StudentChat:
    """The local JAX GPT as a ChatModel (prompts in ``fmt``; one sampled answer per row)."""

    def __init__(self, graphdef, params, tok, *, prompt_len: int, max_new_tokens: int,
                 batch: int = 64, fmt: ChatFormat = COMPACT):
        self.graphdef, self.params, self.tok, self.fmt = graphdef, params, tok, fmt
        self.P, self.T, self.B = prompt_len, max_new_tokens, batch

    def encode_prompts(self, chats) -> tuple[np.ndarray, np.ndarray]:
        rows = [self.fmt.encode(self.tok, c) for c in chats]
        too_long = [len(r) for r in rows if len(r) > self.P]
        if too_long:
            raise ValueError(f"a prompt has {max(too_long)} tokens > prompt_len={self.P}")
        out = np.full((len(rows), self.P), self.tok.pad_id, np.int32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out, np.array([len(r) for r in rows], np.int32)

    def chat_many(self, chats, *, temperature: float = 0.8, seed: int = 0) -> list[str]:
        """One sampled answer for each chat, batched in fixed-size chunks."""
        import jax

        from lm.sample import SampleCfg, generate
        if not chats:
            return []
        ids, lens = self.encode_prompts(chats)
        stop = tuple(i for i in getattr(self.tok, "eos_ids", ()) if i != self.tok.eos_id)
        cfg = SampleCfg(max_new_tokens=self.T, temperature=temperature,
                        eos_id=self.tok.eos_id, pad_id=self.tok.pad_id, stop_ids=stop)
        out = []
        for s in range(0, len(chats), self.B):
            k = min(self.B, len(chats) - s)
            bi = np.full((self.B, self.P), self.tok.pad_id, np.int32)
            bl = np.ones((self.B,), np.int32)
            bi[:k], bl[:k] = ids[s:s + k], lens[s:s + k]
            rng = jax.random.fold_in(jax.random.key(seed), s)
            res = generate(self.graphdef, self.params, bi, bl, cfg,
                           rng if temperature > 0 else None)
            toks, n = np.asarray(res["tokens_BxT"])[:k], np.asarray(res["lengths_B"])[:k]
            out += [self.tok.decode(t[:m]) for t, m in zip(toks, n)]  # up to and incl. EOS
        return out

    def chat(self, messages, *, n=1, temperature=0.8, max_tokens=128, seed=0) -> list[str]:
        return self.chat_many([messages] * n, temperature=temperature, seed=seed)
