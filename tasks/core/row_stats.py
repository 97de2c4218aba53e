"""The uncertainty a ``BenchmarkRow`` carries beside its figures (keyword-only fields, so the row's
own positional fields keep their order): the 95% interval of each quality figure, the paired
table against the teacher, and the spread of every timed figure. Computed by
``tasks.evaluation.evidence`` (quality) and ``tasks.runtime.measure`` (timing).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True)
class RowStats:
    # rows each split was measured on
    n_test: int | None = None
    n_val: int | None = None
    # 95% intervals [low, high]: Wilson over the rows for accuracies and agreement rates, bootstrap for mean cosines
    test_acc_ci95: list[float] | None = None
    val_acc_ci95: list[float] | None = None
    cos_mean_ci95: list[float] | None = None
    val_cos_mean_ci95: list[float] | None = None
    top1_agree_ci95: list[float] | None = None
    # classification: the paired table against the teacher on the same rows, per split ("val", "test"):
    # {"n", "ref_only", "cand_only"} (tasks.evaluation.stats.paired_counts)
    paired_vs_teacher: dict[str, dict[str, int]] = field(default_factory=dict)
    # every timed figure: {"median", "iqr": [p25, p75], "n", "over": "rounds" | "runs"}
    timing: dict[str, dict] = field(default_factory=dict)
    # the selected row only: it against the runner-up (tasks.evaluation.evidence.runner_up)
    runner_up: dict | None = None
