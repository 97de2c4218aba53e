"""Selection rules (pure functions): the sweep's ``select`` and the benchmark's ``choose``, on the
point value and at 95% confidence."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config.errors import SpecError
from pipelines.config.select import choose, parse_select
from tasks.core.types import BenchmarkRow
from tasks.evaluation import selection
from tasks.steps.benchmark import BenchmarkConfig

TRIALS = {
    0: {"val_acc": 0.97, "throughput": 100.0},
    1: {"val_acc": 0.95, "throughput": 300.0},
    2: {"val_acc": 0.90, "throughput": 900.0},
}


def test_fastest_within_one_point_of_an_upstream_metric():
    rule = parse_select({"metric": "throughput", "mode": "max", "where": "val_acc >= student.val_acc - 0.03"}, "s")
    assert rule.where.constant == pytest.approx(-0.03)
    assert choose(rule, TRIALS, {"student": {"val_acc": 0.98}}) == (1, "")


def test_min_mode_and_plain_constant():
    assert choose(parse_select({"metric": "throughput", "mode": "min"}, "s"), TRIALS, {})[0] == 0
    assert choose(parse_select({"metric": "val_acc", "where": "throughput > 200"}, "s"), TRIALS, {})[0] == 1


def test_no_trial_meets_the_constraint_takes_the_closest_and_says_so():
    index, note = choose(parse_select({"metric": "throughput", "where": "val_acc >= 0.99"}, "s"), TRIALS, {})
    assert index == 0 and "no trial meets 'val_acc >= 0.99'" in note


def test_failed_trials_are_not_candidates():
    assert choose(parse_select({"metric": "throughput"}, "s"), {0: TRIALS[0], 2: TRIALS[2]}, {})[0] == 2


@pytest.mark.parametrize(
    "node,msg",
    [
        ({"metric": "a", "mode": "up"}, "s.mode"),
        ({"mode": "max"}, "s.metric"),
        ({"metric": "a", "where": "a ~ 1"}, "s.where"),
        ({"metric": "a", "x": 1}, "s.x"),
    ],
)
def test_bad_rules_name_the_key(node, msg):
    with pytest.raises(SpecError, match=msg.replace(".", r"\.")):
        parse_select(node, "s")


# ---- noise-aware selection: select.confidence (sweeps) ---------------------------------------

# A is faster and meets the budget on its point value only; B is slower and meets it at 95%.
NOISY = {
    0: {"val_acc": 0.962, "val_acc_ci95_low": 0.950, "val_acc_ci95_high": 0.972, "throughput": 300.0},
    1: {"val_acc": 0.980, "val_acc_ci95_low": 0.972, "val_acc_ci95_high": 0.986, "throughput": 100.0},
}
TEACHER = {"teacher": {"val_acc": 0.97, "val_acc_ci95_low": 0.962, "val_acc_ci95_high": 0.977}}
BUDGET = {"metric": "throughput", "where": "val_acc >= teacher.val_acc - 0.01"}  # bound 0.96


def test_confidence_takes_the_budget_at_the_intervals_bound():
    # point rule: A (0.962 >= 0.96) is the fastest that meets it
    assert choose(parse_select(BUDGET, "s"), NOISY, TEACHER) == (0, "")
    # 95%, Newcombe on the difference to the teacher (both intervals):
    # A: d = -0.008, low = -0.008 - sqrt(0.012^2 + 0.007^2) = -0.021892 -> 0.948108 < 0.96: out
    # B: d = +0.010, low = +0.010 - sqrt(0.008^2 + 0.007^2) = -0.000630 -> 0.969370 >= 0.96: in
    rule = parse_select({**BUDGET, "confidence": 0.95}, "s")
    assert rule.confidence == 0.95 and choose(rule, NOISY, TEACHER) == (1, "")


def test_confidence_with_an_exact_reference_and_a_missed_budget():
    # the teacher without an interval counts as exact: A's low = 0.97 - 0.008 - 0.012 = 0.950 < 0.96
    rule = parse_select({**BUDGET, "confidence": 0.95}, "s")
    assert choose(rule, NOISY, {"teacher": {"val_acc": 0.97}})[0] == 1
    # nothing meets 'val_acc >= 0.975' at 95% (B's low is 0.972): the closest, and the note says at what confidence
    index, note = choose(
        parse_select({"metric": "throughput", "where": "val_acc >= 0.975", "confidence": 0.95}, "s"), NOISY, {}
    )
    assert index == 1 and note.startswith("BUDGET MISSED") and "at 95% confidence" in note


def test_confidence_without_logged_intervals_says_so():
    rule = parse_select({**BUDGET, "confidence": 0.95}, "s")
    index, note = choose(rule, {0: {"val_acc": 0.962, "throughput": 300.0}, 1: NOISY[1]}, TEACHER)
    assert index == 0 and "no val_acc_ci95_low/_high for trial(s) [0]: judged on the point value" in note


def test_confidence_levels_other_than_95_are_refused_naming_the_key():
    with pytest.raises(SpecError, match=r"s\.confidence"):
        parse_select({**BUDGET, "confidence": 0.9}, "s")


# ---- noise-aware selection: the benchmark's choose (tasks.evaluation.selection) ---------------


def row(name: str, kind: str, val_acc: float, thr: float, size: int, **kw) -> BenchmarkRow:
    return BenchmarkRow(
        name=name, kind=kind, parent=None, test_acc=val_acc, val_acc=val_acc, params=1, nonzero_params=1, flops=1,
        size_bytes=size, latency_ms_p50_b1=1.0, latency_ms_p95_b1=1.0, throughput_b256=thr, **kw,
    )  # fmt: skip


def bench_rule(**kw) -> BenchmarkConfig:
    return BenchmarkConfig(**{"choose": True, "max_acc_drop": 0.01, **kw})


def test_benchmark_budget_at_95_uses_the_paired_difference():
    teacher = row("teacher", "teacher", 0.95, 500.0, 400_000)
    # a: 0.5 points below the teacher on 1,000 val rows (30 rows only the teacher gets, 25 only a gets)
    #    Agresti-Min: b=30.5 c=25.5 n=1002, d=-5/1002=-0.004990, se=sqrt(56 - 25/1002)/1002=0.0074667,
    #    low = -0.004990 - 1.959964*0.0074667 = -0.019624 < -0.01: out at 95%
    a = row(
        "a", "pruned", 0.945, 2000.0, 50_000, paired_vs_teacher={"val": {"n": 1000, "ref_only": 30, "cand_only": 25}}
    )
    # b: 1 point above (5 vs 15): d=10/1002=0.009980, se=sqrt(21 - 100/1002)/1002=0.0045626, low=+0.001037: in
    b = row("b", "pruned", 0.96, 1000.0, 60_000, paired_vs_teacher={"val": {"n": 1000, "ref_only": 5, "cand_only": 15}})
    rows = [teacher, a, b]
    assert selection.acc_margin(a, teacher, 0.95) == pytest.approx(-0.019624, abs=1e-5)
    assert selection.acc_margin(b, teacher, 0.95) == pytest.approx(0.001037, abs=1e-5)
    assert selection.choose(rows, bench_rule(), "classification")[0] is a  # point rule: a's 0.945 >= 0.94
    picked, note = selection.choose(rows, bench_rule(confidence=0.95), "classification")
    assert picked is b and note == ""
    # nobody at 95%: the closest, and the rule in the note says at what confidence
    _, note = selection.choose([teacher, a], bench_rule(confidence=0.95), "classification")
    assert "at 95% confidence" in note


def test_speed_ties_come_from_the_measured_spread():
    teacher = row("teacher", "teacher", 0.95, 100.0, 400_000)
    timing = lambda lo, hi: {"throughput_b256": {"median": (lo + hi) / 2, "iqr": [lo, hi], "n": 3, "over": "rounds"}}  # noqa: E731
    big = row("big", "pruned", 0.95, 1200.0, 90_000, timing=timing(1000.0, 1400.0))
    small = row("small", "pruned", 0.95, 1000.0, 50_000, timing=timing(900.0, 1100.0))
    # 1200 vs 1000 is 17% apart: not a tie by the fixed 10%, but the spreads overlap -> the smaller wins
    assert selection.choose([teacher, big, small], bench_rule(), "classification")[0] is small
    big.timing = timing(1150.0, 1250.0)  # tight: 1150 > 1100, the spreads part -> really faster
    assert selection.choose([teacher, big, small], bench_rule(), "classification")[0] is big


def test_runner_up_not_distinguishable_says_so_in_one_line():
    rng = np.random.default_rng(0)
    truth = rng.random(400) < 0.9
    flip = rng.random(400) < 0.02  # the two models disagree on ~2% of rows, either way
    evid = {"teacher": {"val": truth}, "a": {"val": truth ^ flip}, "b": {"val": truth ^ np.roll(flip, 7)}}
    spread = {"throughput_b256": {"median": 1000.0, "iqr": [950.0, 1050.0], "n": 3, "over": "rounds"}}
    teacher = row("teacher", "teacher", float(truth.mean()), 100.0, 400_000)
    a = row("a", "pruned", float(evid["a"]["val"].mean()), 1010.0, 40_000, timing=spread)
    b = row("b", "pruned", float(evid["b"]["val"].mean()), 1000.0, 50_000, timing=spread)
    sel, notes = selection.mark_selected([teacher, a, b], None, bench_rule(max_acc_drop=0.05), "classification", evid)
    assert sel is a and a.runner_up["name"] == "b" and a.runner_up["distinguishable"] is False
    (line,) = [n for n in notes if n.startswith("NOT DISTINGUISHABLE")]
    assert "'a' vs runner-up 'b'" in line and "throughput IQRs overlap" in line and "taken as the smaller" in line
    assert "\n" not in line
    # a clearly faster runner-up spread: distinguishable, no line
    b.timing = {"throughput_b256": {"median": 500.0, "iqr": [480.0, 520.0], "n": 3, "over": "rounds"}}
    sel, notes = selection.mark_selected([teacher, a, b], None, bench_rule(max_acc_drop=0.05), "classification", evid)
    assert sel is a and a.runner_up["distinguishable"] is True and not any("NOT DISTINGUISHABLE" in n for n in notes)
