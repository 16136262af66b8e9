"""The logical graph of Iterative Graph Prompting: nodes, labelled edges, JSON, enhancement, hint.

Schema [CODE, Temus-AI/IterativeGraphAlignment src/graph.py]::

    {"nodes": ["I", "Elephant", ...],
     "edges": [{"from": "I", "to": "Elephant", "relationship": "should not talk about"}, ...]}

- ``parse_graph(text)`` reads the first balanced ``{...}`` block of a model's reply (the official
  code uses a regex for the first JSON block; text after it is "advice" and ignored here). Any
  failure (no block, bad JSON, wrong types, an edge naming an unknown node is *repaired* by adding
  the node) returns ``None`` -- never an exception -- so the caller falls back to the old graph.
- ``to_hint()`` is the student's hint: one ``"u label v"`` line per edge
  (IGRlearn.convert_graph_to_string [CODE]).
- ``enhance(g)`` = one refinement round done symbolically: add a reverse edge for every edge
  (label from ``REVERSE`` or ``"is related to"``) and one step of transitive closure along the
  *original* forward edges out of ``"I"`` (``I -r-> a -s-> b`` gives ``I -r-> b``). The official
  code asks the VLM for "reverse relation connections and transitive connections" and merges the
  reply losslessly; this deterministic version is what the offline teacher returns [INFERRED].
  DEVIATION [spec §1.2, §5]: the graph is passed as *text* (JSON / hint lines), not as a rendered
  d2 image to a vision model -- no VLM is available offline.
"""

from __future__ import annotations

import dataclasses
import json

SELF = "I"
REVERSE = {"has": "belongs to", "belongs to": "has", "is a kind of": "has kind",
           "has kind": "is a kind of", "means": "is meant by", "is meant by": "means",
           "comes from": "gives", "gives": "comes from"}


@dataclasses.dataclass(frozen=True)
class Edge:
    src: str
    label: str
    dst: str


@dataclasses.dataclass(frozen=True)
class Graph:
    """An immutable labelled digraph; node order and edge order are kept (deterministic text)."""

    nodes: tuple[str, ...] = ()
    edges: tuple[Edge, ...] = ()

    @staticmethod
    def build(edges, nodes=()) -> Graph:
        """From ``(u, label, v)`` triples (and extra nodes); duplicates are dropped, order kept."""
        es = tuple(dict.fromkeys(Edge(*e) if not isinstance(e, Edge) else e for e in edges))
        ns = list(dict.fromkeys(nodes))
        for e in es:
            for n in (e.src, e.dst):
                if n not in ns:
                    ns.append(n)
        return Graph(tuple(ns), es)

    def merge(self, other: Graph) -> Graph:
        """Lossless union: every old edge kept, new ones appended (official non-roleplay merge)."""
        return Graph.build(self.edges + other.edges, self.nodes + other.nodes)

    def out_edges(self, node: str) -> list[Edge]:
        return [e for e in self.edges if e.src == node]

    def to_json(self) -> dict:
        return {"nodes": list(self.nodes),
                "edges": [{"from": e.src, "to": e.dst, "relationship": e.label}
                          for e in self.edges]}

    def dumps(self) -> str:
        return json.dumps(self.to_json())

    def to_hint(self, sep: str = "\n") -> str:
        """One ``"u label v"`` line per edge -- the hint given to the student."""
        return sep.join(f"{e.src} {e.label} {e.dst}" for e in self.edges)


def from_json(obj) -> Graph | None:
    """A Graph from a decoded JSON object in the paper's schema, or None if it does not fit."""
    if not isinstance(obj, dict) or not isinstance(obj.get("edges", []), list):
        return None
    nodes = obj.get("nodes", [])
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        return None
    edges = []
    for e in obj.get("edges", []):
        if not isinstance(e, dict):
            return None
        u, v, r = e.get("from"), e.get("to"), e.get("relationship", e.get("label"))
        if not all(isinstance(x, str) and x.strip() for x in (u, v, r)):
            return None
        edges.append((u.strip(), r.strip(), v.strip()))
    if not nodes and not edges:
        return None
    return Graph.build(edges, [n.strip() for n in nodes])


def first_json_block(text: str) -> str | None:
    """The first balanced ``{...}`` substring (braces inside JSON strings respected), or None."""
    start = text.find("{")
    while start != -1:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            c = text[i]
            if in_str:
                esc = (c == "\\") and not esc
                if c == '"' and not esc:
                    in_str = False
                elif c != "\\":
                    esc = False
                continue
            if c == '"':
                in_str = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i + 1]
        start = text.find("{", start + 1)
    return None


def parse_graph(text) -> Graph | None:
    """The graph in the first JSON block of ``text``; None on any failure (never raises)."""
    if not isinstance(text, str):
        return None
    start = 0
    while True:
        block = first_json_block(text[start:])
        if block is None:
            return None
        try:
            g = from_json(json.loads(block))
        except (ValueError, RecursionError):
            g = None
        if g is not None:
            return g
        start = text.find(block, start) + 1  # try the next block


def reverse_edges(g: Graph) -> Graph:
    """Every edge reversed (``v inv(label) u``); edges out of/into ``I`` are not reversed
    (the assistant node is the subject of the rule, as in the paper's examples)."""
    out = [(e.dst, REVERSE.get(e.label, "is related to"), e.src) for e in g.edges
           if SELF not in (e.src, e.dst)]
    return Graph.build(out)


def transitive_step(g: Graph) -> Graph:
    """One step of closure from ``I``: ``I -r-> a`` and ``a -s-> b`` give ``I -r-> b``."""
    new = []
    for e in g.out_edges(SELF):
        for f in g.out_edges(e.dst):
            if f.dst != SELF:
                new.append((SELF, e.label, f.dst))
    return Graph.build(new)


def enhance(g: Graph) -> Graph:
    """One refinement round: reverse edges, then one transitive step over the union; merged
    losslessly into ``g``."""
    g1 = g.merge(reverse_edges(g))
    return g1.merge(transitive_step(g1))


def rule_targets(g: Graph, labels: tuple[str, ...]) -> set[str]:
    """Nodes ``v`` with an edge ``I -label-> v`` whose label contains one of ``labels``."""
    low = tuple(x.lower() for x in labels)
    return {e.dst for e in g.out_edges(SELF) if any(x in e.label.lower() for x in low)}
