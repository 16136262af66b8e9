"""Prompt templates (teacher IGP and student SAIL) and their parsers.

Two styles of the SAIL prompts (spec §2.2):
- ``"full"`` -- the official wording [CODE IGRlearn.py] for real chat models: NAIVE, PROPOSE
  (hinted), PARROT (hint + teacher answer), answers as ``Thought: ... Answer: ...``.
- ``"compact"`` -- the same three prompts shortened for the tiny word-level student
  [INFERRED, spec §4.1]: ``<q> query`` / ``<hint> edges <q> query`` / ``<hint> edges <prev>
  answer <q> query``, the rule in the system message, the answer alone (no Thought field).
The ALIGNMENT CHECK prompt is not used: DEVIATION [spec §4.2] -- the student's self-check is
replaced by a reference-agreement judge (a tiny GPT cannot evaluate itself), see ``sail.agrees``.

The IGP teacher prompts follow src/graph.py and src/hg.py [CODE] with the graph sent as JSON text
instead of a rendered image (DEVIATION, spec §1.2). ``parse_prompt`` recovers the fields of any
prompt built here, which is how the offline rule teacher and scripted helpers read their input.
"""

from __future__ import annotations

import re

Messages = list[dict]

# ----------------------------------------------------------------------------- SAIL (student)

_END = ("How would you address the query while following the instruction? Provide your thought "
        "and answer.\nThought: [...]\nAnswer: [...]")


def naive(rule: str, query: str, style: str = "compact") -> Messages:
    user = f"<q> {query}" if style == "compact" else f"Query: {query}\n{_END}"
    return [{"role": "system", "content": rule}, {"role": "user", "content": user}]


def propose(rule: str, query: str, hint: str, style: str = "compact") -> Messages:
    if style == "compact":
        user = f"<hint> {hint} <q> {query}"
    else:
        user = f"Given the instruction: {rule}\nQuery: {query}\nHint: {hint}\n{_END}"
    return [{"role": "system", "content": rule}, {"role": "user", "content": user}]


def parrot(rule: str, query: str, hint: str, prev: str, style: str = "compact") -> Messages:
    if style == "compact":
        user = f"<hint> {hint} <prev> {prev} <q> {query}"
    else:
        user = (f"Given the instruction: {rule}\nQuery: {query}\nMy previous thought: {hint}\n"
                f"My previous answer: {prev}\nInspired by the previous thought and answer, "
                f"how would you address the query while following the instruction? Provide "
                f"your thought and answer.\nThought: [...]\nAnswer: [...]")
    return [{"role": "system", "content": rule}, {"role": "user", "content": user}]


def parse_answer(text: str) -> str:
    """The text after the last ``Answer:`` (full style), else the whole reply, stripped."""
    if "Answer:" in text:
        return text.rsplit("Answer:", 1)[1].strip()
    return text.strip()


# ----------------------------------------------------------------------------- IGP (teacher)

GRAPH_SCHEMA = ('{"nodes": ["I", ...], "edges": [{"from": "I", "to": "...", '
                '"relationship": "..."}]}')


def graph_prompt(rule: str, query: str) -> Messages:
    return [{"role": "user", "content": (
        f"Given instruction: {rule}, and query: {query}. Create a logical graph containing nodes "
        "and edges, where nodes are nouns or concepts and edges are relationships between them. "
        f"Use the node \"I\" for yourself. Answer with JSON only: {GRAPH_SCHEMA}")}]


def enhance_prompt(rule: str, query: str, graph_json: str) -> Messages:
    return [{"role": "user", "content": (
        f"Given instruction: {rule}, and query: {query}.\nCurrent logical graph: {graph_json}\n"
        "Enhance the graph: add reverse relation connections and transitive connections. "
        f"Answer with the whole graph as JSON only: {GRAPH_SCHEMA}")}]


def answer_prompt(rule: str, query: str, hint: str) -> Messages:
    return [{"role": "system", "content": rule}, {"role": "user", "content": (
        f"Logical graph of the instruction:\n{hint}\nFollow the instruction in the graph and "
        f"answer the following query: {query}. Do not mention the graph and directly provide "
        "your answer.")}]


def naive_teacher_prompt(rule: str, query: str) -> Messages:
    return [{"role": "system", "content": f"Instruction: {rule}\n\nPlease answer the query "
             "directly."}, {"role": "user", "content": query}]


def self_check_prompt(rule: str, response: str) -> Messages:
    return [{"role": "user", "content": (
        f"Is the following response following the instruction '{rule}'? Response: {response}\n"
        "Answer with 'Yes' or 'No'.")}]


def clean_answer(text: str) -> str:
    """Official post-processing: the words image/diagram (here also graph) -> instruction."""
    return re.sub(r"\b(image|diagram|graph)\b", "instruction", text.strip())


# ----------------------------------------------------------------------------- parsing

_PATTERNS = [
    ("graph", re.compile(r"^Given instruction: (?P<rule>.*?), and query: (?P<query>.*?)\. "
                         r"Create a logical graph", re.S)),
    ("enhance", re.compile(r"^Given instruction: (?P<rule>.*?), and query: (?P<query>.*?)\.\n"
                           r"Current logical graph: (?P<graph>.*?)\nEnhance", re.S)),
    ("answer", re.compile(r"^Logical graph of the instruction:\n(?P<hint>.*?)\nFollow the "
                          r"instruction in the graph and answer the following query: "
                          r"(?P<query>.*?)\. Do not mention", re.S)),
    ("self_check", re.compile(r"^Is the following response following the instruction "
                              r"'(?P<rule>.*?)'\? Response: (?P<response>.*?)\nAnswer with", re.S)),
    ("parrot", re.compile(r"^<hint> (?P<hint>.*?) <prev> (?P<prev>.*?) <q> (?P<query>.*)$", re.S)),
    ("propose", re.compile(r"^<hint> (?P<hint>.*?) <q> (?P<query>.*)$", re.S)),
    ("naive", re.compile(r"^<q> (?P<query>.*)$", re.S)),
    ("parrot", re.compile(r"^Given the instruction: .*?\nQuery: (?P<query>.*?)\nMy previous "
                          r"thought: (?P<hint>.*?)\nMy previous answer: (?P<prev>.*?)\nInspired",
                          re.S)),
    ("propose", re.compile(r"^Given the instruction: .*?\nQuery: (?P<query>.*?)\nHint: "
                           r"(?P<hint>.*?)\nHow would", re.S)),
    ("naive", re.compile(r"^Query: (?P<query>.*?)\nHow would", re.S)),
]


def parse_prompt(messages: Messages) -> dict:
    """``{"kind", "rule", "query", "hint", "prev", "graph", "response"}`` of a prompt built by this
    module (missing fields are ""). Raises ValueError on a prompt it does not know."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    for kind, pat in _PATTERNS:
        m = pat.match(user)
        if m:
            out = dict.fromkeys(("rule", "query", "hint", "prev", "graph", "response"), "")
            out.update({k: v.strip() for k, v in m.groupdict().items()})
            out["kind"] = kind
            if not out["rule"]:
                out["rule"] = system.removeprefix("Instruction: ").split("\n\n")[0].strip()
            return out
    if system.startswith("Instruction: ") and "Please answer the query directly" in system:
        return {"kind": "naive_teacher", "rule": system.removeprefix("Instruction: ")
                .split("\n\n")[0].strip(), "query": user.strip(), "hint": "", "prev": "",
                "graph": "", "response": ""}
    raise ValueError(f"unrecognised prompt: {user[:80]!r}")
