"""Iterative Graph Prompting (teacher side): graph -> ``n_refine`` enhancements -> answer.

[CODE src/graph.py ``iterative_graph_prompting``, src/hg.py ``IGP_inference``]
1. initial graph (text prompt, JSON in the paper's schema);
2. ``n_refine`` enhancement rounds ("add reverse relation connections and transitive
   connections"), each merged *losslessly* into the current graph; an unparsable reply keeps the
   old graph (counted in ``parse_failures``). The official code does exactly one round; the
   paper's number is [NOT FOUND]; default ``n_refine=1``;
3. the answer from the final graph; "image/diagram/graph" in the answer become "instruction".
If the initial graph cannot be parsed, the answer falls back to the naive answer (``graph=None``).

Gate [CODE hg.py]: ``igp_gated`` first asks the plain question, then the teacher's self-check
("Is the following response following the instruction ...? Yes/No"); IGP only runs on "No".

DEVIATIONS (spec §1.2, §5): the graph is sent as JSON text / hint lines, not as a rendered d2
image to a VLM; the roleplay branch that *replaces* the graph with REJECT/ANSWER edges is folded
into the uniform rule-edge graph (``I -rule-> node``) of the offline scenarios, and the
non-roleplay "Summarized request" rewrite call is skipped.
"""

from __future__ import annotations

import dataclasses

from rl.iga import graph as G
from rl.iga import prompts as Pr


@dataclasses.dataclass(frozen=True)
class IGPResult:
    answer: str
    graph: G.Graph | None
    naive: str = ""  # the plain answer (gated runs)
    ran_igp: bool = True
    parse_failures: int = 0

    @property
    def hint(self) -> str:
        return self.graph.to_hint(" ; ") if self.graph is not None else ""


def _one(model, messages, seed: int, max_tokens: int) -> str:
    return model.chat(messages, n=1, temperature=0.0, max_tokens=max_tokens, seed=seed)[0]


def naive_answer(teacher, rule: str, query: str, *, seed: int = 0, max_tokens: int = 512) -> str:
    """The baseline: "Instruction: <rule> Please answer the query directly." [CODE hg.py]."""
    return Pr.parse_answer(_one(teacher, Pr.naive_teacher_prompt(rule, query), seed, max_tokens))


def self_check(teacher, rule: str, response: str, *, seed: int = 0) -> bool:
    """True iff the teacher says the response follows the rule (first word "yes")."""
    reply = _one(teacher, Pr.self_check_prompt(rule, response), seed, 8)
    return reply.strip().lower().startswith("yes")


def igp(teacher, rule: str, query: str, *, n_refine: int = 1, seed: int = 0,
        max_tokens: int = 1024) -> IGPResult:
    """Graph, refinement rounds and the graph-grounded answer (never raises on bad graphs)."""
    if n_refine < 0:
        raise ValueError(f"n_refine={n_refine} must be >= 0")
    g = G.parse_graph(_one(teacher, Pr.graph_prompt(rule, query), seed, max_tokens))
    if g is None:
        return IGPResult(naive_answer(teacher, rule, query, seed=seed), None, parse_failures=1)
    fails = 0
    for r in range(n_refine):
        new = G.parse_graph(_one(teacher, Pr.enhance_prompt(rule, query, g.dumps()), seed + r + 1,
                                 max_tokens))
        if new is None:
            fails += 1
        else:
            g = g.merge(new)
    reply = _one(teacher, Pr.answer_prompt(rule, query, g.to_hint()), seed, max_tokens)
    return IGPResult(Pr.clean_answer(Pr.parse_answer(reply)), g, parse_failures=fails)


def igp_gated(teacher, rule: str, query: str, *, n_refine: int = 1, seed: int = 0) -> IGPResult:
    """Plain answer first; IGP only if the teacher's own self-check says it breaks the rule."""
    plain = naive_answer(teacher, rule, query, seed=seed)
    if self_check(teacher, rule, plain, seed=seed):
        return IGPResult(plain, None, naive=plain, ran_igp=False)
    res = igp(teacher, rule, query, n_refine=n_refine, seed=seed)
    return dataclasses.replace(res, naive=plain)
