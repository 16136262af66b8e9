"""rl.iga.graph: JSON schema round trip, parsing model text (None on failure), enhancement."""

import json

from rl.iga.graph import Edge, Graph, enhance, parse_graph, reverse_edges, rule_targets

ELEPHANT = {"nodes": ["I", "Elephant", "Largest land mammal"],
            "edges": [{"from": "I", "to": "Elephant", "relationship": "should not talk about"},
                      {"from": "Elephant", "to": "Largest land mammal", "relationship": "is"}]}


def test_json_round_trip_keeps_order():
    g = parse_graph(json.dumps(ELEPHANT))
    assert g.nodes == ("I", "Elephant", "Largest land mammal")
    assert g.edges[0] == Edge("I", "should not talk about", "Elephant")
    assert g.to_json() == ELEPHANT
    assert parse_graph(g.dumps()) == g


def test_first_json_block_amid_prose_and_braces_in_strings():
    text = ("Sure! Here is the graph:\n```json\n" + json.dumps(
        {"nodes": ["I", "a {b}"], "edges": [{"from": "I", "to": "a {b}",
                                              "relationship": "likes"}]})
        + "\n```\nAdvice: keep it simple {not json}")
    g = parse_graph(text)
    assert g.edges == (Edge("I", "likes", "a {b}"),)


def test_skips_a_non_graph_block_before_the_graph():
    g = parse_graph('{"note": 1} then ' + json.dumps(ELEPHANT))
    assert g is not None and len(g.edges) == 2


def test_malformed_text_gives_none_never_raises():
    bad = ["", "no json here", "{", '{"nodes": ["I"], "edges": [{"from": "I"}]}',
           '{"nodes": "I", "edges": []}', '{"nodes": [], "edges": []}', "[1, 2]",
           '{"edges": [{"from": "I", "to": 3, "relationship": "x"}]}', None, 42,
           '{"nodes": ["I"], "edges": [1]}', "{" * 5000]
    for t in bad:
        assert parse_graph(t) is None, t


def test_unknown_edge_nodes_are_added():
    g = parse_graph('{"edges": [{"from": "I", "to": "X", "relationship": "r"}]}')
    assert g.nodes == ("I", "X")


def test_enhance_hand_computed():
    g = Graph.build([("I", "should not mention", "elephant"), ("ivory", "comes from", "tusks"),
                     ("tusks", "belongs to", "elephant")])
    assert reverse_edges(g).edges == (Edge("tusks", "gives", "ivory"),
                                      Edge("elephant", "has", "tusks"))
    g1 = enhance(g)
    # lossless: old edges first, then reverses, then one transitive step from I
    assert g1.edges[:3] == g.edges
    assert g1.edges[3:] == (Edge("tusks", "gives", "ivory"), Edge("elephant", "has", "tusks"),
                            Edge("I", "should not mention", "tusks"))
    assert rule_targets(g1, ("not mention",)) == {"elephant", "tusks"}
    g2 = enhance(g1)
    assert rule_targets(g2, ("not mention",)) == {"elephant", "tusks", "ivory"}
    assert enhance(enhance(g2)) == enhance(g2)  # closure reached: nothing new


def test_hint_lines_and_merge():
    g = Graph.build([("I", "am", "customer"), ("customer", "asks", "hours")])
    assert g.to_hint() == "I am customer\ncustomer asks hours"
    assert g.to_hint(" ; ") == "I am customer ; customer asks hours"
    m = g.merge(Graph.build([("customer", "asks", "hours"), ("I", "reject", "hours")]))
    assert m.edges == g.edges + (Edge("I", "reject", "hours"),)
