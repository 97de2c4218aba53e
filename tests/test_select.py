"""Selection rules (pure functions): the sweep's ``select`` and the benchmark's ``choose``, on the
point value and at 95% confidence."""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np
import pytest

from pipelines.config.errors import SpecError
from pipelines.config.select import choose, parse_select
from pipelines.search.pareto import Row, best
from tasks.core.types import BenchmarkRow
from tasks.evaluation import evidence, selection
from tasks.serving.load import ServingLoad
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


def test_missed_budget_takes_the_closest_as_judged_not_by_point_value():
    """Budget 0.94 at 95%: A sits at 0.939 (short even at its point value, lower bound 0.925); B at
    0.952 passes on its point value but its lower bound is 0.935. Against a constant bound the judged
    value is the lower bound itself, so B is closer: 0.94 - 0.935 = 0.005 short (A: 0.015)."""
    trials = {
        0: {"val_acc": 0.939, "val_acc_ci95_low": 0.925, "val_acc_ci95_high": 0.951, "throughput": 500.0},
        1: {"val_acc": 0.952, "val_acc_ci95_low": 0.935, "val_acc_ci95_high": 0.966, "throughput": 100.0},
    }
    rule = parse_select({"metric": "throughput", "where": "val_acc >= 0.94", "confidence": 0.95}, "s")
    index, note = choose(rule, trials, {})
    assert index == 1
    assert note.startswith("BUDGET MISSED: no trial meets 'val_acc >= 0.94' at 95% confidence")
    assert f"trial 1 (val_acc 0.952, 95% lower bound 0.935: {0.94 - 0.935:.4g} short)" in note and "\n" not in note


def test_missed_upper_budget_takes_the_lowest_upper_bound():
    """'<=' judges the upper bound: A at 10.05 ms (upper 11.5) is nearer 10 by its point value than
    B at 10.5 (upper 10.8), but B's judged value misses by 0.8 and A's by 1.5."""
    trials = {
        0: {"lat": 10.05, "lat_ci95_low": 9.0, "lat_ci95_high": 11.5, "size": 1.0},
        1: {"lat": 10.5, "lat_ci95_low": 10.2, "lat_ci95_high": 10.8, "size": 2.0},
    }
    rule = parse_select({"metric": "size", "mode": "min", "where": "lat <= 10", "confidence": 0.95}, "s")
    index, note = choose(rule, trials, {})
    assert index == 1 and f"95% upper bound 10.8: {10.8 - 10:.4g} short" in note
    # the point rule judges point values: A (0.05 short) is the closest there
    index, note = choose(parse_select({"metric": "size", "mode": "min", "where": "lat <= 10"}, "s"), trials, {})
    assert index == 0 and f"trial 0 (lat 10.05: {10.05 - 10:.4g} short)" in note


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


def agresti_min_low(n: int, ref_only: int, cand_only: int) -> float:
    """Lower end of the Agresti-Min 95% interval of cand - ref accuracy (0.5 added to every cell)."""
    b, c, m = ref_only + 0.5, cand_only + 0.5, n + 2.0
    se = math.sqrt((b + c) - (c - b) ** 2 / m) / m
    return (c - b) / m - NormalDist().inv_cdf(0.975) * se


def test_benchmark_missed_budget_takes_the_closest_lower_bound_and_says_by_how_much():
    """Nothing meets val_acc >= 0.94 at 95%: 'a' has the higher point value (0.946) but many
    discordant rows, so its lower bound is further below the floor than 'b''s (0.944, few)."""
    teacher = row("teacher", "teacher", 0.95, 500.0, 400_000)
    a = row(
        "a", "pruned", 0.946, 900.0, 50_000, paired_vs_teacher={"val": {"n": 1000, "ref_only": 40, "cand_only": 36}}
    )
    b = row("b", "pruned", 0.944, 800.0, 60_000, paired_vs_teacher={"val": {"n": 1000, "ref_only": 8, "cand_only": 2}})
    low_a, low_b = agresti_min_low(1000, 40, 36), agresti_min_low(1000, 8, 2)
    assert low_a < low_b < -0.01  # both miss the 1-point budget, b by less
    picked, note = selection.choose([teacher, a, b], bench_rule(confidence=0.95), "classification")
    assert picked is b
    short = (0.95 - 0.01) - (0.95 + low_b)
    assert note == (
        f"no candidate meets val_acc >= 0.9400 at 95% confidence: selected the closest, "
        f"'b' (val_acc 0.9440, 95% lower bound {0.95 + low_b:.4f}: {short:.4f} short)"
    )
    # the point rule against a teacher at 0.97: both miss 0.96 on their point values, a (higher) is the closest
    strong = row("teacher", "teacher", 0.97, 500.0, 400_000)
    picked, note = selection.choose([strong, a, b], bench_rule(), "classification")
    assert picked is a and note.endswith(f"'a' (val_acc 0.9460: {0.96 - 0.946:.4f} short)")


def test_embedding_gate_at_95_is_not_passed_on_one_validation_row():
    """One validation row: a bootstrap interval would be [c, c] and the 95% gate would take the point
    value on faith; the interval is a cosine's whole range instead, so the gate is not met."""
    fields = evidence.embedding_fields({"test": np.full(20, 0.999), "val": np.array([0.999])}, None)
    assert fields["val_cos_mean_ci95"] == [-1.0, 1.0]
    cand = row("int8", "quantized", 0.0, 900.0, 50_000, val_cos_mean=0.999, val_cos_min=0.999, **fields)
    rule = bench_rule(min_cos_mean=0.99, min_cos_min=0.9)
    assert selection.choose([cand], rule, "embedding") == (cand, "")  # the point rule: 0.999 >= 0.99
    picked, note = selection.choose([cand], dataclasses.replace(rule, confidence=0.95), "embedding")
    assert picked is cand and "no candidate meets val cos_mean >= 0.99 at 95% confidence" in note


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


def spread(key: str, lo: float, hi: float) -> dict:
    return {key: {"median": (lo + hi) / 2, "iqr": [lo, hi], "n": 3, "over": "rounds"}}


def test_runner_up_line_judges_speed_by_the_objective():
    """With objective latency (or served p99), the "not distinguishable" line asks whether *that*
    figure tells the two apart, never throughput."""
    truth = np.random.default_rng(1).random(400) < 0.9
    evid = {"teacher": {"val": truth}, "a": {"val": truth.copy()}, "b": {"val": truth.copy()}}  # same quality
    teacher = row("teacher", "teacher", float(truth.mean()), 100.0, 400_000)
    a = row("a", "pruned", float(truth.mean()), 1000.0, 40_000)
    b = row("b", "pruned", float(truth.mean()), 1000.0, 50_000)
    rule = bench_rule(max_acc_drop=0.05, objective="latency_ms_p50_b1")
    # latency spreads apart (a clearly quicker), throughput spreads overlap: distinguishable, no line
    a.latency_ms_p50_b1, b.latency_ms_p50_b1 = 1.0, 2.0
    a.timing = spread("latency_ms_p50_b1", 0.9, 1.1) | spread("throughput_b256", 950.0, 1050.0)
    b.timing = spread("latency_ms_p50_b1", 1.9, 2.1) | spread("throughput_b256", 950.0, 1050.0)
    sel, notes = selection.mark_selected([teacher, a, b], None, rule, "classification", evid)
    assert sel is a and a.runner_up["distinguishable"] is True and not any("NOT DISTINGUISHABLE" in n for n in notes)
    # latency spreads overlap, throughput spreads apart: not distinguishable on the objective
    b.latency_ms_p50_b1 = 1.05
    a.timing = spread("latency_ms_p50_b1", 0.8, 1.6) | spread("throughput_b256", 2000.0, 2100.0)
    b.timing = spread("latency_ms_p50_b1", 0.9, 1.5) | spread("throughput_b256", 1000.0, 1100.0)
    sel, notes = selection.mark_selected([teacher, a, b], None, rule, "classification", evid)
    (line,) = [n for n in notes if n.startswith("NOT DISTINGUISHABLE")]
    assert sel is a and "batch-1 latency p50 IQRs overlap (0.8–1.6 vs 0.9–1.5 ms)" in line and "throughput" not in line
    # served p99 has no spread: within speed_tie (10%) of the better one counts as tied
    a.serve_p99_ms, b.serve_p99_ms = 10.0, 10.5
    served = bench_rule(max_acc_drop=0.05, objective="serve_p99_ms", serving=ServingLoad(concurrency=1))
    sel, notes = selection.mark_selected([teacher, a, b], None, served, "classification", evid)
    (line,) = [n for n in notes if n.startswith("NOT DISTINGUISHABLE")]
    assert sel is a and "served p99 within 10% (10 vs 10.5 ms, no spread)" in line
    b.serve_p99_ms = 20.0  # twice as slow served: distinguishable whatever throughput says
    sel, notes = selection.mark_selected([teacher, a, b], None, served, "classification", evid)
    assert sel is a and a.runner_up["distinguishable"] is True


def test_search_fallback_never_takes_a_gate_rejected_trial_over_a_kept_one():
    """The search's best attempt (no trial feasible) is the highest val_acc, its judged value, among
    the trials whose parity gate passed: a rejected model is never deployed unless all were."""
    rows = [
        Row("kept", {}, {"val_acc": 0.90, "throughput": 100.0, "feasible": 0.0}),
        Row("rejected", {}, {"val_acc": 0.93, "throughput": 900.0, "feasible": 0.0, "rejected": 1.0}),
        Row("lower", {}, {"val_acc": 0.85, "throughput": 300.0, "feasible": 0.0}),
    ]
    chosen, feasible = best(rows, {"throughput": "max"})
    assert not feasible and chosen is rows[0]
    chosen, _ = best(rows[1:2], {"throughput": "max"})  # every finished trial rejected: the best of them
    assert chosen is rows[1]
