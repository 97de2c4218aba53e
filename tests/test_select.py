"""Sweep selection rules (pure functions)."""

from __future__ import annotations

import pytest

from pipelines.config.errors import SpecError
from pipelines.config.select import choose, parse_select

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
