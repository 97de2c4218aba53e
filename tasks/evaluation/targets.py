"""The benchmark's targets: the ratios the project's goals are stated in, and the no-speedup flag.

``targets`` states selected vs teacher and each INT8 model vs its FP32 parent with
``Comparison.between`` (with the per-row outcomes, each accuracy delta's paired interval and
McNemar p-value); ``flag_no_speedup`` marks a candidate with far fewer FLOPs than the reference
but little more throughput (e.g. unstructured sparsity on dense kernels).
"""

from __future__ import annotations

from typing import Protocol

from tasks.core.types import BenchmarkRow, Comparison, Targets
from tasks.evaluation import evidence


class TargetRule(Protocol):
    """The thresholds of the benchmark's config that the targets and the no-speedup flag read."""

    @property
    def int8_min_speedup(self) -> float: ...
    @property
    def int8_max_acc_drop(self) -> float: ...
    @property
    def no_speedup_flops_ratio(self) -> float: ...
    @property
    def no_speedup_throughput_ratio(self) -> float: ...


def targets(
    rows: list[BenchmarkRow],
    teacher: BenchmarkRow | None,
    selected: BenchmarkRow | None,
    cfg: TargetRule,
    evid: evidence.Evidence | None = None,
) -> Targets:
    """Selected-vs-teacher ratios (None without either) and INT8-vs-FP32-parent checks; with the
    per-row outcomes ``evid``, each accuracy delta's paired interval and McNemar p-value."""
    by_name = {r.name: r for r in rows}
    int8 = []
    for r in rows:
        parent = by_name.get(r.parent) if r.int8_onnx and r.parent else None
        if parent is not None:
            c = Comparison.between(r, parent)
            c.meets_target = bool(
                (c.throughput_speedup or 0.0) >= cfg.int8_min_speedup
                and (c.test_acc_delta is None or c.test_acc_delta >= -cfg.int8_max_acc_drop)
            )
            int8.append(c)
    out = Targets(
        teacher=teacher.name if teacher else None,
        selected=selected.name if selected else None,
        selected_vs_teacher=Comparison.between(selected, teacher) if teacher and selected else None,
        int8_vs_fp32=int8,
        int8_target={"min_speedup": cfg.int8_min_speedup, "max_acc_drop": cfg.int8_max_acc_drop},
    )
    if evid is not None:
        evidence.annotate_targets(out, evid)
    return out


def flag_no_speedup(rows: list[BenchmarkRow], teacher: BenchmarkRow | None, cfg: TargetRule) -> None:
    """``no_speedup`` on every row: >= ``no_speedup_flops_ratio`` fewer FLOPs than ``teacher`` (the
    reference) but < ``no_speedup_throughput_ratio`` its throughput (None without a reference)."""
    for r in rows:
        if teacher is None or r is teacher or r.simulated:
            r.no_speedup = None if teacher is None or r.simulated else False
            continue
        c = Comparison.between(r, teacher)
        r.no_speedup = bool(
            (c.flops_reduction or 0.0) >= cfg.no_speedup_flops_ratio
            and (c.throughput_speedup or 0.0) < cfg.no_speedup_throughput_ratio
        )
