"""The search comparison's grid and scores (benchmarks/search_compare.py), by hand-computed values."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from pipelines.config.compose import load_config
from pipelines.config.spec import build_spec

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("search_compare", ROOT / "benchmarks" / "search_compare.py")
sc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sc)


def test_the_grid_is_a_valid_compress_chain_of_24_trained_candidates():
    cfg = load_config(["experiment=smoke", *sc.GRID_CHAIN, *sc.FULL_GRID])
    spec = build_spec(cfg.pipeline, cfg.trusted_models)
    assert "scratch" not in spec.steps and "kbit" not in spec.steps
    assert len(spec.steps["student_kd"].trials) == 6
    assert len(spec.steps["prune"].trials) == 18
    amounts = sorted({t.params["amount"] for t in spec.steps["prune"].trials})
    assert amounts[0] == 0.2 and amounts[-1] == 0.8 and len(amounts) == 9


def test_score_counts_feasible_points_and_the_hypervolume_above_the_reference():
    # (val_acc, throughput) in training order; None: stopped early
    points = [(0.70, 1_000.0), None, (0.72, 10_000.0), (0.66, 100_000.0), (0.60, 1e6)]
    s = sc.score(points, bound=0.69, ref=(0.62, math.log10(100.0)))
    assert s["best_feasible_throughput"] == 10_000.0 and s["feasible"] == 2
    # (0.72, 4), (0.70, 3), (0.66, 5) above (0.62, 2); (0.60, 6) left of it:
    # 0.02 * (4 - 2) + 0.04 * (4 - 2) + 0.04 * (5 - 2) = 0.04 + 0.08 + 0.12
    assert s["hypervolume"] == pytest.approx(0.24)
    assert s["best_so_far"] == [1_000.0, 1_000.0, 10_000.0, 10_000.0, 10_000.0]


def test_candidates_to_counts_stopped_trials_and_says_never():
    best = sc.score([None, None, (0.8, 50.0), (0.8, 99.0)], 0.7, (0.6, 0.0))["best_so_far"]
    assert sc.candidates_to(best, 0.95 * 100.0) == 4  # the two stopped trials count
    assert sc.candidates_to(best, 0.95 * 50.0) == 3
    assert sc.candidates_to(best, 1_000.0) is None
    assert sc.candidates_to(best, 0.0) is None  # no grid best to reach


def test_points_of_orders_by_training_and_drops_rejected_models():
    rows = [
        {"order": 2, "val_acc": 0.8, "throughput_b256": 5.0, "rejected": False},
        {"order": 0, "val_acc": 0.7, "throughput_b256": 9.0, "rejected": True},
    ]
    res = {"trained_candidates": 4, "candidates": rows}
    assert sc.points_of(res, rows) == [None, None, (0.8, 5.0), None]
