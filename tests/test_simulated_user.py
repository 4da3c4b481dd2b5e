"""The adaptive simulated user: each follow-up is chosen from the previous answer, scored per turn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixtune.data.generate import generate_samples
from mixtune.data.kpis import score as score_kpi
from mixtune.data.ontology import load_ontology
from mixtune.eval.matrix import CONVERSATIONS, aggregate
from mixtune.eval.simulated_user import SimulatedUser, session_record
from mixtune.rules import RuleEngine, RuleSet

EX = Path(__file__).resolve().parents[1] / "examples" / "finance_risk"
ONTO = load_ontology(EX / "ontology.yaml")
ENGINE = RuleEngine(RuleSet.load(EX / "rules.yaml"))
SAMPLES = {s.task_id: s for s in generate_samples(ONTO, n_per_task=1, seed=0, defect_rate=0.0)}
LCR = SAMPLES["calc_lcr"]
GOLD = next(m.content for m in LCR.messages if m.role == "assistant")  # e.g. 流动性覆盖率=865.00/273.00×100%=316.85%...


def user(**kw) -> SimulatedUser:
    return SimulatedUser(ONTO, ENGINE, kpi_fn=score_kpi, seed=0, **kw)


def second_turn(first_answer: str):
    """Run one session for two turns; the model's first answer is ``first_answer``."""
    u = user(max_turns=2)
    seen = []

    def respond(convs, sessions):
        seen.append([c[-1]["content"] for c in convs])
        return [first_answer if len(c) == 1 else GOLD for c in convs]

    (sess,) = u.run([LCR], respond)
    return sess, seen


def test_follow_up_depends_on_the_previous_answer():
    no_figure, seen_a = second_turn("流动性覆盖率达到监管要求。")
    wrong, seen_b = second_turn(GOLD.replace(json.loads(LCR.gold)["keywords"][0], "999.99%"))
    right, seen_c = second_turn(GOLD)
    # three different answers → three different follow-ups, each from what the answer got wrong
    assert [t.action for t in no_figure.turns] == ["first", "ask_missing"]
    assert "具体数值" in seen_a[1][0] and "316.85" not in seen_a[1][0]  # asks, never gives the figure away
    assert [t.action for t in wrong.turns] == ["first", "challenge"]
    assert "999.99%" in seen_b[1][0] and any(a in seen_b[1][0] for a in ONTO.task("calc_lcr").anomalies)
    assert right.turns[1].action in ("switch_variant", "perturbed_repeat", "prohibited")
    assert len({seen_a[1][0], seen_b[1][0], seen_c[1][0]}) == 3
    # the corrected second answer scores higher than the wrong first one
    assert wrong.turns[1].score > wrong.turns[0].score


def test_full_session_covers_variant_switch_perturbation_and_prohibited_request():
    u = user(max_turns=6, abandon_after=0)
    prompts = []

    def respond(convs, sessions):
        prompts.append(convs[0][-1]["content"])
        last = convs[0][-1]["content"]
        if "保本" in last or "承诺" in last:
            return ["抱歉，我们不能承诺保本或收益，投资有风险。"]
        return [GOLD]

    (sess,) = u.run([LCR], respond)
    actions = [t.action for t in sess.turns]
    assert len(actions) == 6 and actions[0] == "first"
    assert {"switch_variant", "perturbed_repeat", "prohibited"} <= set(actions)
    switch = prompts[actions.index("switch_variant")]
    ctx = json.loads(LCR.context_variant)
    assert "背景换成" in switch and any(v in switch for v in ctx.values())
    rec = session_record(sess, "m")
    assert rec["metrics"]["session_success"] == 1.0 and len(rec["detail"]["turn_scores"]) == 6
    assert all(f == "thumbs_up" for f in rec["detail"]["feedback"])


def test_bad_answers_draw_thumbs_down_and_abandonment_and_noise_is_seeded():
    u = user(max_turns=6, abandon_after=2)
    (sess,) = u.run([LCR], lambda convs, s: ["我不知道。"] * len(convs))
    assert sess.abandoned and len(sess.turns) == 2 and [t.feedback for t in sess.turns] == ["thumbs_down"] * 2
    rec = session_record(sess, "m")
    assert rec["metrics"]["session_success"] == 0.0
    # noise flips some ratings, identically for the same seed
    runs = []
    for _ in range(2):
        noisy = user(max_turns=6, abandon_after=0, noise=0.5)
        out = noisy.run(list(SAMPLES.values()), lambda convs, s: [GOLD] * len(convs))
        runs.append([t.feedback for x in out for t in x.turns])
    assert runs[0] == runs[1] and "thumbs_down" in runs[0] and "thumbs_up" in runs[0]


def test_matrix_reports_score_by_turn_and_session_success():
    u = user(max_turns=3, abandon_after=0)
    good = [session_record(s, "good") for s in u.run([LCR], lambda c, s: [GOLD] * len(c))]
    # an answer that degrades: right at first, then empty
    bad = [session_record(s, "fading") for s in u.run([LCR], lambda c, s: [GOLD if len(x) == 1 else "" for x in c])]
    matrix, _ = aggregate({"good": good, "fading": bad})
    g, f = matrix["good"][CONVERSATIONS], matrix["fading"][CONVERSATIONS]
    assert g["success_rate"] == 1.0 and f["success_rate"] == 0.0
    assert len(f["score_by_turn"]) == 3 and f["score_by_turn"][0] > f["score_by_turn"][2]


class Voice:
    def __init__(self, text):
        self.text, self.calls = text, 0

    def generate(self, prompts, **kw):
        self.calls += 1
        assert all("意图" in p[0]["content"] for p in prompts)
        return [self.text for _ in prompts]


@pytest.mark.parametrize("said,expected_scripted", [("请问具体数值是多少？", False), ("  ", True)])
def test_a_voice_model_phrases_the_turns_and_an_empty_phrasing_keeps_the_script(said, expected_scripted):
    voice = Voice(said)
    u = user(max_turns=2, voice=voice)
    (sess,) = u.run([LCR], lambda c, s: ["流动性覆盖率达到监管要求。"] * len(c))
    assert voice.calls == 1
    assert ("具体数值" in sess.turns[1].message and "你没有给出" in sess.turns[1].message) == expected_scripted
    if not expected_scripted:
        assert sess.turns[1].message == said


def test_an_openai_compatible_endpoint_can_voice_the_user(tmp_path):
    """The user's turns phrased by a tiny model behind `mixtune serve`'s app, through OpenAIBackend."""
    from mixtune.eval.backends import HFBackend, OpenAIBackend
    from mixtune.model.tiny import make_test_model
    from mixtune.release.serve import build_serve_app
    from mixtune.release.server import ServerThread

    class Spy:  # records what the served model was asked and said
        def __init__(self, inner):
            self.inner, self.seen = inner, []

        def generate(self, convs, **kw):
            out = self.inner.generate(convs, **kw)
            self.seen += [(c[-1]["content"], o) for c, o in zip(convs, out)]
            return out

    served = Spy(HFBackend(str(make_test_model(tmp_path / "m"))))
    with ServerThread(build_serve_app(served, model_name="voice", api_key="k")) as srv:
        voice = OpenAIBackend(srv.url, api_key="k", model="voice")
        u = user(max_turns=2, voice=voice, voice_tokens=6)
        (sess,) = u.run([LCR], lambda c, s: ["流动性覆盖率达到监管要求。"] * len(c))
        voice.close()
    assert [t.action for t in sess.turns] == ["first", "ask_missing"]
    asked, said = served.seen[0]
    assert "意图" in asked and "你没有给出" in asked  # the endpoint was given the scripted intent
    # its words become the user's turn; an untrained tiny model says only whitespace, so the script stays
    assert sess.turns[1].message == (said.strip() or asked.split("意图：", 1)[1])
