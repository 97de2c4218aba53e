"""What ``search_efficiency.py`` compares: the grid it runs, and how a method's candidates score.

Pure functions of measured points, importable without side effects (tests/test_search_compare.py).
A point is ``(val_acc, throughput)`` of one trained candidate, in the order the method trained
them, or None for a candidate without a deployable model (stopped early, or rejected).
"""

from __future__ import annotations

import math

from pipelines.search.pareto import hypervolume

BUDGET = 0.01
AMOUNTS = [round(0.2 + 0.075 * i, 3) for i in range(9)]  # 0.2 .. 0.8, the search space's range
FULL_GRID = [  # 6 KD + 2 x 9 prune = 24 trained candidates
    "pipeline.steps.student_kd.sweep={params.temperature: [1.0, 2.0, 4.0], params.alpha: [0.5, 0.9]}",
    "pipeline.steps.prune.sweep={params.method: [channel, magnitude], params.amount: " + str(AMOUNTS) + "}",
]
GRID_CHAIN = [  # the compress chain only: no scratch / mutual baselines, no simulated k-bit models
    "~pipeline.steps.scratch",
    "~pipeline.steps.student_mutual",
    "~pipeline.steps.kbit",
    "~pipeline.steps.report.inputs.kbit",
    "pipeline.steps.benchmark.inputs.models=[teacher,student_kd,'prune[*]',quantize]",
    "pipeline.steps.report.inputs.candidates=[teacher,student_kd,'prune[*]']",
]


def points_of(res: dict, rows: list[dict]) -> list[tuple[float, float] | None]:
    """(val_acc, throughput) of each trained candidate in order, from the common measurement;
    None for one without a deployable model (stopped early, or rejected by its parity gate)."""
    at = {r["order"]: r for r in rows}
    n = max(res["trained_candidates"], len(res["candidates"]))
    return [
        None if k not in at or at[k]["rejected"] else (at[k]["val_acc"], at[k]["throughput_b256"]) for k in range(n)
    ]


def score(points: list[tuple[float, float] | None], bound: float, ref: tuple[float, float]) -> dict:
    """A method's figures: its best throughput with val_acc >= ``bound`` (0: none), how many
    candidates were feasible, the hypervolume of (val_acc, log10 throughput) above ``ref``, and
    the best feasible throughput after each trained candidate."""
    real = [p for p in points if p is not None]
    feasible = [t for a, t in real if a >= bound]
    return {
        "best_feasible_throughput": max(feasible, default=0.0),
        "feasible": len(feasible),
        "hypervolume": hypervolume([(a, math.log10(t)) for a, t in real if t > 0], ref),
        "best_so_far": list(_best_so_far(points, bound)),
    }


def _best_so_far(points: list[tuple[float, float] | None], bound: float):
    best = 0.0
    for p in points:
        best = max(best, p[1]) if p is not None and p[0] >= bound else best
        yield best


def candidates_to(best_so_far: list[float], target: float) -> int | None:
    """How many candidates, in order, until the best feasible throughput reaches ``target`` (None: never)."""
    return next((i + 1 for i, b in enumerate(best_so_far) if target > 0 and b >= target), None)
