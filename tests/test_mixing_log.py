"""mixing_log.jsonl: one validated line per cycle, readable after a crash, rewindable on resume."""

import pytest

from mixtune.mixing import Curriculum, GroupModulation, MixingLog, make_policy, make_record

TASKS = ["calc", "style"]


def cycle_records(n):
    pol = make_policy("heat", TASKS, {"calc": 2.0}, seed=0)
    cur = Curriculum(TASKS, [1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], mastery_cycles=2)
    mod = GroupModulation()
    for c in range(n):
        scores = {"calc": 0.5, "style": 0.9}
        dec = pol.update(c, 10 * c, scores, {"calc": [0.0, 1.0]}, {"calc": 1.2}, {"style": 0.1})
        yield make_record(dec, cur.levels(), cur.update(c, scores), mod.factors())


def test_log_lines_hold_every_decision(tmp_path):
    log = MixingLog(tmp_path / "run" / "mixing_log.jsonl")
    for rec in cycle_records(3):
        log.append(rec)
    recs = log.records()
    assert [r["cycle"] for r in recs] == [0, 1, 2] and recs[2]["step"] == 20
    r = recs[1]
    assert r["method"] == "heat" and r["scores"] == {"calc": 0.5, "style": 0.9}
    assert set(r["heat"]["calc"]) >= {"heat", "decay", "cv", "rejection", "gap"}
    assert r["heat"]["calc"]["cv"] == pytest.approx(1.0) and r["heat"]["style"]["rejection"] == 0.1
    assert sum(r["weights"].values()) == pytest.approx(1.0)
    assert r["promotions"] == ["style"] and r["modulation"]["logic"] == 1.5
    with pytest.raises(ValueError, match="levels"):
        log.append({k: v for k, v in r.items() if k != "levels"})


def test_torn_last_line_is_ignored_and_rewind_drops_replayed_cycles(tmp_path):
    log = MixingLog(tmp_path / "mixing_log.jsonl")
    for rec in cycle_records(5):
        log.append(rec)
    with log.path.open("a") as f:
        f.write('{"cycle": 5, "ste')  # crash mid-write
    assert len(log.records()) == 5
    assert log.rewind(2) == 2
    assert [r["cycle"] for r in log.records()] == [0, 1, 2]
    assert log.path.read_text().endswith("\n")
