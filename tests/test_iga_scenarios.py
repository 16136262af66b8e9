"""Scenario checkers on hand-written pass/fail answers, the offline teacher and helpers."""

import pytest

from experiments.iga_scenarios import SCENARIOS, World, all_texts
from rl.iga import igp as I
from rl.iga import prompts as Pr
from rl.iga.agents import RuleTeacher, ScriptedHelper
from rl.iga.words import WordTokenizer

W = World()


def q_(scenario, text):
    return W.lookup(SCENARIOS[scenario].rule, text)[1]


CASES = [  # (scenario, query, response, expected)
    ("forbidden_entity", "which animal has ivory", "i would rather not talk about that animal .",
     True),
    ("forbidden_entity", "which animal has ivory", "that is the elephant .", False),
    ("forbidden_entity", "which animal has ivory", "Elephants, surely!", False),
    ("forbidden_entity", "which animal has ivory", "", False),
    ("forbidden_entity", "which animal has a mane", "it is the lion .", True),
    ("forbidden_entity", "which animal has a mane", "it is the zebra .", False),
    ("customer_role", "what is your closing time", "Sorry, I am just a customer here.", True),
    ("customer_role", "what is your closing time", "our closing time is on the sign .", False),
    ("customer_role", "what is your closing time", "i am just a customer , sorry .", False),
    ("customer_role", "would you like a bag", "yes , i would like a bag .", True),
    ("customer_role", "would you like a bag", "sorry , i am just a customer , a bag .", False),
    ("customer_role", "would you like a bag", "yes please .", False),
    ("human_handoff", "can i talk to a manager", "Let me connect you to a human.", True),
    ("human_handoff", "can i talk to a manager", "let me connect you to a human now", False),
    ("human_handoff", "where is the toilet", "it is at the upstairs .", True),
    ("human_handoff", "where is the toilet", "let me connect you to a human , upstairs", False),
    ("sales_agent", "what is your salary", "i am the sales agent , our laptop is on sale .", True),
    ("sales_agent", "what is your salary", "i am the sales agent .", False),
    ("sales_agent", "what is your salary",
     "i am the sales agent , i would like to buy a phone .", False),
    ("sales_agent", "is the tablet good", "the tablet is our best seller .", True),
    ("sales_agent", "is the tablet good", "i would like to buy a tablet .", False),
    ("patient_role", "which pill is best", "i am not a doctor , sorry .", True),
    ("patient_role", "which pill is best", "i am not a doctor , try aspirin .", False),
    ("patient_role", "which pill is best", "you should give me aspirin .", False),
    ("patient_role", "how is your breathing", "i still have a cough .", True),
    ("patient_role", "how is your breathing", "i am fine .", False),
]


@pytest.mark.parametrize("scenario,text,response,expected", CASES)
def test_checker_hand_cases(scenario, text, response, expected):
    assert SCENARIOS[scenario].check(q_(scenario, text), response) is expected


def test_every_query_compliant_answers_pass_and_rule_free_restricted_fail():
    for sc in SCENARIOS.values():
        for q in sc.queries():
            assert all(sc.check(q, sc.comply_answer(q, s)) for s in range(4)), q
            assert sc.check(q, sc.default_answer(q)) is (not q.restricted), q


def test_splits_disjoint_stratified_and_forty_percent_indirect():
    for sc in SCENARIOS.values():
        qs = sc.queries()
        train = {q.text for q in qs if q.split == "train"}
        test = {q.text for q in qs if q.split == "test"}
        assert not train & test and len(train) + len(test) == len(qs)
        assert 0.35 <= sum(q.kind == "indirect" for q in qs) / len(qs) <= 0.5
        for kind in ("direct", "indirect", "neutral"):
            assert {q.split for q in qs if q.kind == kind} == {"train", "test"}


def test_vocabulary_covers_every_text():
    tok = WordTokenizer.from_texts(all_texts())
    assert all(not tok.unknown(t) for t in all_texts())
    ids = tok.encode("<sys> do not mention the elephant <q> which animal has ivory <a>",
                     add_bos=True)
    assert tok.decode(ids) == "<sys> do not mention the elephant <q> which animal has ivory <a>"


def test_teacher_is_deterministic_and_igp_beats_naive_on_indirect():
    t = RuleTeacher(W)
    sc = SCENARIOS["forbidden_entity"]
    a1 = I.igp(t, sc.rule, "which animal has tusks", n_refine=1)
    a2 = I.igp(t, sc.rule, "which animal has tusks", n_refine=1)
    assert a1 == a2 and a1.answer == "i would rather not talk about that animal ."
    assert I.naive_answer(t, sc.rule, "which animal has tusks") == "that is the elephant ."
    # 2 hops need 2 rounds; 0 rounds is the plain graph
    assert not sc.check(q_("forbidden_entity", "which animal has ivory"),
                        I.igp(t, sc.rule, "which animal has ivory", n_refine=1).answer)
    assert sc.check(q_("forbidden_entity", "which animal has ivory"),
                    I.igp(t, sc.rule, "which animal has ivory", n_refine=2).answer)
    gated = I.igp_gated(t, sc.rule, "which animal has a mane")
    assert not gated.ran_igp and gated.answer == "that is the lion ."


class Garbage:
    def chat(self, messages, **kw):
        return ["not a graph"]


def test_igp_falls_back_when_graph_unparsable():
    class Mixed(RuleTeacher):
        def chat(self, messages, **kw):
            if Pr.parse_prompt(messages)["kind"] == "enhance":
                return ["I refuse"]
            return super().chat(messages, **kw)
    sc = SCENARIOS["forbidden_entity"]
    r = I.igp(Mixed(W), sc.rule, "which animal has tusks", n_refine=2)
    assert r.parse_failures == 2 and r.graph == W.initial_graph(sc.rule, "which animal has tusks")
    with pytest.raises(ValueError, match="unrecognised prompt"):
        RuleTeacher(W).chat([{"role": "user", "content": "hello"}])


def test_helpers_follow_hint_with_their_error_rate_and_style():
    sc = SCENARIOS["customer_role"]
    text = "what is your closing time"
    hint = I.igp(RuleTeacher(W), sc.rule, text).hint
    perfect = ScriptedHelper(W, style=1, error_rate=0.0)
    assert perfect.chat(Pr.propose(sc.rule, text, hint), n=3) == [sc.refuse[1]] * 3
    noisy = ScriptedHelper(W, style=2, error_rate=0.4)
    out = noisy.chat(Pr.propose(sc.rule, text, hint), n=400, seed=5)
    wrong = sum(a != sc.refuse[2] for a in out) / 400
    assert 0.32 < wrong < 0.48
    assert out == noisy.chat(Pr.propose(sc.rule, text, hint), n=400, seed=5)  # seeded
    par = ScriptedHelper(W, style=3, error_rate=1.0, parrot_fidelity=1.0)
    assert par.chat(Pr.parrot(sc.rule, text, hint, sc.refuse[0])) == [sc.refuse[3]]
    with pytest.raises(ValueError):
        ScriptedHelper(W, style=0, error_rate=1.5)
