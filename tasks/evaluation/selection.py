"""How benchmark picks: the selected candidate among the measured rows.

``choose`` takes the highest ``throughput_b256`` among candidates that are not rejected (parity
gate) or simulated and meet the quality floors on the validation split (classification: val
accuracy at most ``max_acc_drop`` below the teacher's; embedding: ``min_cos_mean`` and
``min_cos_min`` to the reference); candidates whose throughput spread over the timing rounds
(``row.timing``, the interquartile range) overlaps the fastest one's count as equally fast and
the smallest of them is taken (``speed_tie``, a fixed fraction, only for rows without a spread).
With ``confidence`` (0.95; 0 = off, the point rule) a budget must hold at the interval's bound:
classification, the lower bound of the paired val-accuracy difference to the teacher (Agresti-Min
over ``paired_vs_teacher``) must be at least ``-max_acc_drop``; embedding, the lower bound of the
val ``cos_mean`` interval must meet ``min_cos_mean``. ``quality_metric: macro_f1`` (classification)
puts the budget on val macro-F1 instead: at most ``max_acc_drop`` (0.01 = 1 point of macro-F1 x 100)
below the teacher's, always by the point rule: macro-F1 has no paired interval (its bootstrap
interval is the row's own, not of the difference), so ``confidence`` then applies to nothing and the
rule says so; the runner-up's paired comparison stays on accuracy. When no candidate meets the
floors, ``choose`` takes the one whose judged value (``judged_quality``: the interval's bound at
95%, else the point) is highest and its note says by how much it missed. ``mark_selected`` keeps a ``selected`` input
unless it was rejected. ``targets`` and ``flag_no_speedup`` (the goals' ratios) live in
``tasks.evaluation.targets`` and are named here too. ``objective`` (``OBJECTIVES``) makes
``choose`` take the best row by another figure instead, e.g. the served p99 latency of
``benchmark.serving``; rows within ``speed_tie`` of the best count as tied and the smallest wins.
"""

from __future__ import annotations

import math
from typing import Protocol

from tasks.core.options import TaskKind
from tasks.core.types import BenchmarkRow, ModelArtifact
from tasks.evaluation import evidence, stats
from tasks.evaluation.targets import flag_no_speedup as flag_no_speedup  # named here too (re-exported)
from tasks.evaluation.targets import targets as targets

# what ``choose`` maximises (or minimises) among the candidates that meet the quality floors
OBJECTIVES = {"throughput_b256": "max", "latency_ms_p50_b1": "min", "serve_p99_ms": "min", "serve_rps": "max"}
CONFIDENCE_LEVELS = (0.0, 0.95)  # off (the point rule) or the level every stored interval is drawn at
QUALITY_FIELDS = {"accuracy": "val_acc", "macro_f1": "val_macro_f1"}  # classification: what the budget is on


def check_confidence(value: float, key: str) -> None:
    """A one-line error naming ``key`` unless ``value`` is one of ``CONFIDENCE_LEVELS``."""
    if value not in CONFIDENCE_LEVELS:
        raise ValueError(f"{key} must be one of {CONFIDENCE_LEVELS} (0 = the point rule), got {value}")


class SelectionRule(Protocol):
    """The thresholds of the benchmark's config that selection and targets read."""

    @property
    def choose(self) -> bool: ...
    @property
    def max_acc_drop(self) -> float: ...
    @property
    def min_cos_mean(self) -> float: ...
    @property
    def min_cos_min(self) -> float: ...
    @property
    def speed_tie(self) -> float: ...
    @property
    def confidence(self) -> float: ...
    @property
    def objective(self) -> str: ...
    @property
    def quality_metric(self) -> str: ...


# how the runner-up line names each objective, and its unit
OBJECTIVE_WORDS = {
    "throughput_b256": ("throughput", " /s"),
    "latency_ms_p50_b1": ("batch-1 latency p50", " ms"),
    "serve_p99_ms": ("served p99", " ms"),
    "serve_rps": ("served throughput", " req/s"),
}


def _iqr(row: BenchmarkRow, key: str = "throughput_b256") -> list[float] | None:
    """The spread (IQR over the timing rounds) of the row's figure ``key``; None without one."""
    return (row.timing.get(key) or {}).get("iqr")


def _tied(row: BenchmarkRow, fastest: BenchmarkRow, tie: float) -> bool:
    """Is ``row`` as fast as ``fastest``: their throughput IQRs overlap, or (a row without a spread)
    it is within ``tie`` (a fraction) of it. Two shared cores time the same model up to ~10% apart
    from run to run (MiniLM's dynamic INT8 at batch 32: 178, 185 and 223 /s in three runs): a model
    5% faster but 15% larger is not faster, it is noise."""
    a, b = _iqr(row), _iqr(fastest)
    if a is not None and b is not None:
        return stats.overlaps(a, b)
    return (row.throughput_b256 or 0.0) >= (1.0 - tie) * (fastest.throughput_b256 or 0.0)


def _fastest_then_smallest(rows: list[BenchmarkRow], tie: float, objective: str = "throughput_b256") -> BenchmarkRow:
    """The fastest row by ``throughput_b256``; among rows tied with it (``_tied``), the smallest.
    Another ``objective`` (``OBJECTIVES``) is ``best_then_smallest``'s."""
    if objective != "throughput_b256":
        return best_then_smallest(rows, objective, tie)
    fastest = max(rows, key=lambda r: r.throughput_b256 or 0.0)
    tied = [r for r in rows if _tied(r, fastest, tie)]
    return min(tied, key=lambda r: (r.size_bytes, -(r.throughput_b256 or 0.0)))


def best_then_smallest(rows: list[BenchmarkRow], objective: str, tie: float) -> BenchmarkRow:
    """The best row by ``objective`` (a row without the figure is worst); among rows within ``tie``
    (a fraction) of it, the smallest."""
    low = OBJECTIVES[objective] == "min"
    value = lambda r: getattr(r, objective)  # noqa: E731
    known = [r for r in rows if value(r) is not None] or rows
    best = (min if low else max)(known, key=lambda r: value(r) or 0.0)
    bound = (1.0 + tie if low else 1.0 - tie) * (value(best) or 0.0)
    tied = [r for r in known if value(r) is not None and (value(r) <= bound if low else value(r) >= bound)] or [best]
    return min(tied, key=lambda r: r.size_bytes)


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def speed_tied(a: BenchmarkRow, b: BenchmarkRow, objective: str, tie: float) -> tuple[bool | None, str]:
    """Can the selection ``objective`` (``OBJECTIVES``) not tell ``a`` and ``b`` apart, and the words
    saying why: their spreads over the timing rounds (IQR) overlap; for figures without a spread
    (the served ones), they are within ``tie`` of the better one, as ``choose`` ties them. None when
    either row lacks the figure. Judged on the figure selection ranks by, never on another one."""
    name, unit = OBJECTIVE_WORDS[objective]
    sa, sb = _iqr(a, objective), _iqr(b, objective)
    if sa is not None and sb is not None:
        tied = stats.overlaps(sa, sb)
        spans = f"{_num(sa[0])}–{_num(sa[1])} vs {_num(sb[0])}–{_num(sb[1])}{unit}"
        return tied, f"{name} IQRs {'overlap' if tied else 'do not overlap'} ({spans})"
    va, vb = getattr(a, objective), getattr(b, objective)
    if va is None or vb is None:
        return None, f"no {name} for both"
    if OBJECTIVES[objective] == "min":
        tied = max(va, vb) <= (1.0 + tie) * min(va, vb)
    else:
        tied = min(va, vb) >= (1.0 - tie) * max(va, vb)
    return tied, f"{name} {'within' if tied else 'more than'} {tie:.0%} ({_num(va)} vs {_num(vb)}{unit}, no spread)"


def acc_margin(row: BenchmarkRow, teacher: BenchmarkRow, confidence: float, metric: str = "accuracy") -> float:
    """Val accuracy minus the teacher's: the point value, or with ``confidence`` the lower bound of
    the paired difference (Newcombe's from the two Wilson intervals when there is no paired table).
    ``metric`` macro_f1: val macro-F1 minus the teacher's, the point value at any ``confidence``."""
    key = QUALITY_FIELDS[metric]
    point = (getattr(row, key) or 0.0) - (getattr(teacher, key) or 0.0)
    if not confidence or metric != "accuracy":
        return point
    counts = row.paired_vs_teacher.get("val")
    if counts:
        return float(stats.paired_difference(counts, confidence)["delta_ci95"][0])
    if row.val_acc_ci95 and teacher.val_acc_ci95:
        ci, t_ci = row.val_acc_ci95, teacher.val_acc_ci95
        return stats.unpaired_difference(row.val_acc or 0.0, ci, teacher.val_acc or 0.0, t_ci)[0]
    return point


def eligible(rows: list[BenchmarkRow], cfg: SelectionRule, task: str) -> tuple[list, list, str]:
    """(pool: not rejected, simulated or the teacher; those meeting the quality floors; the rule)."""
    pool = [r for r in rows if not (r.rejected or r.simulated) and r.kind not in ("teacher", "reference")]
    teacher = next((r for r in rows if r.kind == "teacher"), None)
    conf = cfg.confidence
    at = f" at {conf:.0%} confidence" if conf else ""
    if task == TaskKind.classification:
        key, metric = QUALITY_FIELDS[cfg.quality_metric], cfg.quality_metric
        if teacher is None:
            return pool, list(pool), f"{key} >= -1 (no teacher)"
        ok = [r for r in pool if acc_margin(r, teacher, conf, metric) >= -cfg.max_acc_drop]
        at = " (point rule: macro-F1 has no paired interval)" if conf and metric != "accuracy" else at
        return pool, ok, f"{key} >= {(getattr(teacher, key) or 0.0) - cfg.max_acc_drop:.4f}{at}"
    low = lambda r: (r.val_cos_mean_ci95[0] if conf and r.val_cos_mean_ci95 else r.val_cos_mean) or 0  # noqa: E731
    ok = [r for r in pool if low(r) >= cfg.min_cos_mean and (r.val_cos_min or 0) >= cfg.min_cos_min]
    return pool, ok, f"val cos_mean >= {cfg.min_cos_mean}{at} and cos_min >= {cfg.min_cos_min}"


def runner_up(rows: list[BenchmarkRow], sel: BenchmarkRow | None, cfg: SelectionRule, task: str) -> BenchmarkRow | None:
    """The eligible candidate ``choose`` would take without ``sel`` (None when there is none)."""
    if sel is None:
        return None
    _, ok, _ = eligible(rows, cfg, task)
    rest = [r for r in ok if r is not sel]
    return _fastest_then_smallest(rest, cfg.speed_tie, cfg.objective) if rest else None


def choose(rows: list[BenchmarkRow], cfg: SelectionRule, task: str) -> tuple[BenchmarkRow | None, str]:
    """(the fastest candidate that is not rejected and meets the quality floors, note)."""
    pool, ok, rule = eligible(rows, cfg, task)
    if ok:
        return _fastest_then_smallest(ok, cfg.speed_tie, cfg.objective), ""
    if not pool:
        return None, "no candidate passed the parity gate: nothing selected"
    teacher = next((r for r in rows if r.kind == "teacher"), None)
    judged = {r.name: judged_quality(r, teacher, cfg, task)[0] for r in pool}
    closest = max(pool, key=lambda r: -math.inf if math.isnan(judged[r.name]) else judged[r.name])
    return closest, f"no candidate meets {rule}: selected the closest, {_shortfall(closest, teacher, cfg, task)}"


def judged_quality(
    row: BenchmarkRow, teacher: BenchmarkRow | None, cfg: SelectionRule, task: str
) -> tuple[float, float, float]:
    """(the row's quality as its floor judges it, that floor, its point value). Classification: the
    teacher's val accuracy (or macro-F1, ``quality_metric``) plus ``acc_margin`` (accuracy at 95%
    confidence: the lower bound of the paired difference) against the teacher's minus
    ``max_acc_drop``; embedding: val ``cos_mean`` (at 95% its interval's lower bound) against
    ``min_cos_mean``. When nothing meets the floors, ``choose`` takes the highest judged value: the
    candidate nearest to meeting them as they are judged."""
    if task == TaskKind.classification:
        key = QUALITY_FIELDS[cfg.quality_metric]
        point = getattr(row, key) or 0.0
        if teacher is None:
            return point, -1.0, point
        ref = getattr(teacher, key) or 0.0
        return ref + acc_margin(row, teacher, cfg.confidence, cfg.quality_metric), ref - cfg.max_acc_drop, point
    point = row.val_cos_mean or 0.0
    ci = row.val_cos_mean_ci95
    return (ci[0] if cfg.confidence and ci else point), cfg.min_cos_mean, point


def _shortfall(row: BenchmarkRow, teacher: BenchmarkRow | None, cfg: SelectionRule, task: str) -> str:
    """``'name' (val_acc 0.9450, 95% lower bound 0.9304: 0.0096 short)``: how far it missed."""
    judged, floor, point = judged_quality(row, teacher, cfg, task)
    name = QUALITY_FIELDS[cfg.quality_metric] if task == TaskKind.classification else "val cos_mean"
    at = f", {cfg.confidence:.0%} lower bound {judged:.4f}" if abs(judged - point) > 1e-12 else ""
    if judged < floor:
        return f"'{row.name}' ({name} {point:.4f}{at}: {floor - judged:.4f} short)"
    return f"'{row.name}' ({name} {point:.4f}{at}; cos_min {row.val_cos_min or 0.0:.4f} < {cfg.min_cos_min})"


def mark_selected(
    rows: list[BenchmarkRow],
    selected: ModelArtifact | None,
    cfg: SelectionRule,
    task: str,
    evid: evidence.Evidence | None = None,
) -> tuple[BenchmarkRow | None, list[str]]:
    """Mark the selected row: the ``selected`` input unless rejected, else ``choose``'s pick. With
    the per-row outcomes ``evid``: each row's paired table against the teacher first, and after
    the pick ``runner_up`` on the selected row, with a note when the two cannot be told apart."""
    notes: list[str] = []
    if evid is not None:
        evidence.pair_with_teacher(rows, evid, task)
    sel = next((r for r in rows if selected is not None and r.name == selected.name), None)
    if sel is not None and sel.rejected:
        notes.append(f"'{sel.name}' was rejected ({sel.rejected_reason}): not selected")
        sel = None
    if sel is None and (cfg.choose or notes):
        sel, note = choose(rows, cfg, task)
        notes += [note] if note else []
    for r in rows:
        r.selected = r is sel
    other = runner_up(rows, sel, cfg, task) if evid is not None else None
    if sel is not None and other is not None:
        speed = speed_tied(sel, other, cfg.objective, cfg.speed_tie)
        sel.runner_up, line = evidence.runner_up(sel, other, evid or {}, task, speed)
        notes += [line] if line else []
    return sel, notes
