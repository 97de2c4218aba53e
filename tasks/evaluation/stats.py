"""Intervals and paired tests for the figures slimray compares (pure functions, numpy + math).

* ``wilson(k, n)``: the Wilson score interval of a proportion (an accuracy over ``n`` rows).
* ``paired_counts`` / ``paired_difference``: two classifiers on the same rows. The difference
  of their accuracies gets the Agresti-Min interval (the paired Wald interval with 0.5 added to
  each cell of the 2x2 table) and McNemar's p-value (``mcnemar``: exact binomial on the
  discordant rows when there are fewer than 25, chi-square with continuity correction otherwise).
* ``bootstrap_mean`` / ``paired_bootstrap``: percentile bootstrap (seeded) of a mean, and of the
  mean difference of two paired per-row figures (e.g. cosine to the reference). Below
  ``MIN_BOOTSTRAP_ROWS`` rows the bootstrap is not trusted: the interval is the figure's whole
  range (``bounds``, e.g. [-1, 1] for a cosine), which no confidence gate can pass, and the paired
  p-value is 1. A percentile bootstrap of a mean is too narrow on few rows (its variance is the
  sample's times (n-1)/n, it sees few distinct resamples, and one row, or equal rows, give an
  interval of zero width): a gate "at 95% confidence" would then add nothing to the point rule.
* ``bootstrap_macro_f1``: the same percentile bootstrap (seeded, rows resampled) of a macro-F1
  from the labels and top-1 class ids: F1 per class from the resample's confusion counts, averaged
  over the classes its labels hold; [0, 1] below ``MIN_BOOTSTRAP_ROWS`` rows.
* ``unpaired_difference``: Newcombe's interval of ``p1 - p2`` from each side's own interval
  (when the per-row outcomes are not at hand, e.g. two sweep trials' logged intervals).
* ``spread``: median and interquartile range of timing rounds.
* ``t_interval``: mean and Student-t interval over seeds (the method benchmarks).

Every interval is a ``[low, high]`` list (JSON-ready); NaN when there is nothing to measure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

CONFIDENCE = 0.95
EXACT_BELOW = 25  # McNemar: exact binomial test below this many discordant rows
MIN_BOOTSTRAP_ROWS = 10  # fewer rows: no bootstrap interval, the figure's whole range instead
BOOTSTRAP_BLOCK = 2_000_000  # macro-F1: resampled rows scored at once (a block of resamples)
UNBOUNDED = (-math.inf, math.inf)
NAN2 = [math.nan, math.nan]


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided normal quantile (1.959964 at 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def wilson(k: float, n: int, confidence: float = CONFIDENCE) -> list[float]:
    """Wilson score interval of ``k`` successes in ``n`` trials."""
    if n <= 0:
        return list(NAN2)
    z, p = z_value(confidence), k / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, center - half), min(1.0, center + half)]


def proportion_ci(p: float | None, n: int, confidence: float = CONFIDENCE) -> list[float] | None:
    """``wilson`` of an accuracy ``p`` measured on ``n`` rows (None when ``p`` is unknown)."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return None
    return wilson(round(p * n), n, confidence)


def mcnemar(b: int, c: int) -> float:
    """Two-sided McNemar p-value from the discordant counts ``b`` and ``c``."""
    n = b + c
    if n == 0:
        return 1.0
    if n < EXACT_BELOW:
        tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0**n
        return min(1.0, 2.0 * tail)
    chi2 = max(abs(b - c) - 1.0, 0.0) ** 2 / n  # continuity correction, never past 0 (b = c: p = 1)
    return math.erfc(math.sqrt(chi2 / 2.0))  # chi-square survival function with 1 degree of freedom


def paired_counts(ref_correct: np.ndarray, cand_correct: np.ndarray) -> dict[str, int]:
    """The paired table's rows: ``n``, ``ref_only`` (reference right, candidate wrong), ``cand_only``."""
    ref, cand = np.asarray(ref_correct, dtype=bool), np.asarray(cand_correct, dtype=bool)
    if ref.shape != cand.shape:
        raise ValueError(f"paired rows differ: {ref.shape} vs {cand.shape}")
    return {"n": int(ref.size), "ref_only": int((ref & ~cand).sum()), "cand_only": int((cand & ~ref).sum())}


def paired_difference(counts: dict[str, int], confidence: float = CONFIDENCE) -> dict:
    """Candidate minus reference accuracy on the same rows: ``delta``, ``delta_ci95`` (Agresti-Min)
    and ``p_value`` (McNemar)."""
    n, b, c = counts["n"], counts["ref_only"], counts["cand_only"]
    if n <= 0:
        return {"delta": math.nan, "delta_ci95": list(NAN2), "p_value": math.nan}
    b2, c2, n2 = b + 0.5, c + 0.5, n + 2.0
    d2 = (c2 - b2) / n2
    se = math.sqrt(max((b2 + c2) - (c2 - b2) ** 2 / n2, 0.0)) / n2
    half = z_value(confidence) * se
    return {"delta": (c - b) / n, "delta_ci95": [max(-1.0, d2 - half), min(1.0, d2 + half)], "p_value": mcnemar(b, c)}


def _percentile_ci(stats: np.ndarray, confidence: float) -> list[float]:
    alpha = (1.0 - confidence) / 2.0
    return [float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))]


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    n_boot: int = 2000,
    seed: int = 0,
    bounds: tuple[float, float] = UNBOUNDED,
) -> list[float]:
    """Percentile bootstrap interval of the mean of ``values`` (seeded: the same input, the same
    interval); ``bounds`` (the figure's whole range) with fewer than ``MIN_BOOTSTRAP_ROWS`` rows."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return list(NAN2)
    if v.size < MIN_BOOTSTRAP_ROWS:
        return list(bounds)
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n_boot, v.size))
    return _percentile_ci(v[idx].mean(axis=1), confidence)


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    n_boot: int = 2000,
    seed: int = 0,
    bounds: tuple[float, float] = UNBOUNDED,
) -> dict:
    """Mean of ``a - b`` over the same rows: ``delta``, ``delta_ci95`` (rows resampled together) and a
    two-sided bootstrap ``p_value``: twice the share of resamples on the far side of 0, counted as
    (k + 1) / (B + 1) so that B resamples never claim p = 0 (the smallest is 2 / (B + 1)). With
    fewer than ``MIN_BOOTSTRAP_ROWS`` rows: ``bounds`` (the difference's whole range) and p = 1."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired rows differ: {a.shape} vs {b.shape}")
    d = a - b
    if d.size == 0:
        return {"delta": math.nan, "delta_ci95": list(NAN2), "p_value": math.nan}
    if d.size < MIN_BOOTSTRAP_ROWS:
        return {"delta": float(d.mean()), "delta_ci95": list(bounds), "p_value": 1.0}
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(axis=1)
    far = min(int((means <= 0).sum()), int((means >= 0).sum()))
    p = 2.0 * (far + 1) / (n_boot + 1)
    return {"delta": float(d.mean()), "delta_ci95": _percentile_ci(means, confidence), "p_value": min(1.0, p)}


def bootstrap_macro_f1(
    labels: Sequence[int] | np.ndarray,
    predicted: Sequence[int] | np.ndarray,
    confidence: float = CONFIDENCE,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[float]:
    """Percentile bootstrap interval of the macro-F1 of ``predicted`` against ``labels`` (class ids
    >= 0): rows resampled together, every resample's F1 per class (2 TP / (support + predicted), 0
    for a class never predicted) averaged over the classes present in that resample's labels. The
    resamples are scored from counts, a block at a time (``_resampled_macro_f1``): no metric call
    per resample, and memory bounded on large splits."""
    y, p = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ: {y.shape} vs {p.shape}")
    if y.size == 0:
        return list(NAN2)
    if y.size < MIN_BOOTSTRAP_ROWS:
        return [0.0, 1.0]  # macro-F1's whole range: too few rows to say
    rng, k = np.random.default_rng(seed), int(max(y.max(), p.max())) + 1
    block = max(1, BOOTSTRAP_BLOCK // y.size)
    scores = [
        _resampled_macro_f1(y, p, rng.integers(0, y.size, size=(min(block, n_boot - i), y.size)), k)
        for i in range(0, n_boot, block)
    ]
    return _percentile_ci(np.concatenate(scores), confidence)


def _resampled_macro_f1(y: np.ndarray, p: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 of each resample (a row of ``idx``) over ``k`` class ids, from per-class counts."""
    n = len(idx)
    offset = np.arange(n)[:, None] * k  # resample b counts class c in cell b * k + c
    yb, pb = y[idx] + offset, p[idx] + offset

    def counts(cells: np.ndarray) -> np.ndarray:
        return np.bincount(cells, minlength=n * k).reshape(n, k)

    support, hits = counts(yb.ravel()), counts(yb[yb == pb])
    total = support + counts(pb.ravel())  # 2 TP + FP + FN
    f1 = np.divide(2.0 * hits, total, out=np.zeros(total.shape), where=total > 0)
    present = support > 0
    return (f1 * present).sum(axis=1) / present.sum(axis=1)


def unpaired_difference(p1: float, ci1: Sequence[float], p2: float, ci2: Sequence[float]) -> list[float]:
    """Newcombe's interval of ``p1 - p2`` from each proportion's own (Wilson) interval."""
    (l1, u1), (l2, u2) = ci1, ci2
    d = p1 - p2
    return [d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)]


def spread(values: Sequence[float] | np.ndarray) -> dict:
    """``median`` and ``iqr`` ([p25, p75], linear interpolation) of timing rounds; ``n`` rounds."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"median": math.nan, "iqr": list(NAN2), "n": 0}
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return {"median": float(q50), "iqr": [float(q25), float(q75)], "n": int(v.size)}


def overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    """Do the intervals ``a`` and ``b`` share a point?"""
    return a[0] <= b[1] and b[0] <= a[1]


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict:
    """``mean``, ``ci95`` (Student t over the values, e.g. one per seed) and ``n``."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return {"mean": math.nan, "ci95": list(NAN2), "n": 0}
    mean = float(v.mean())
    if v.size == 1:
        return {"mean": mean, "ci95": list(NAN2), "n": 1}
    from scipy.stats import t  # scipy comes with scikit-learn; only the benchmarks need it

    half = float(t.ppf(1.0 - (1.0 - confidence) / 2.0, v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": int(v.size)}


def verdict(ci: Sequence[float], what: str) -> str:
    """A conclusion stated only where the interval supports it: the interval of a difference."""
    if any(math.isnan(x) for x in ci):
        return f"{what}: not measured"
    if ci[0] > 0:
        return f"{what}: higher (95% interval {ci[0]:+.4g} to {ci[1]:+.4g} excludes 0)"
    if ci[1] < 0:
        return f"{what}: lower (95% interval {ci[0]:+.4g} to {ci[1]:+.4g} excludes 0)"
    return f"{what}: not distinguishable (95% interval {ci[0]:+.4g} to {ci[1]:+.4g} includes 0)"


def ci_metrics(name: str, ci: Sequence[float] | None) -> dict[str, float]:
    """``{<name>_ci95_low, <name>_ci95_high}`` (MLflow metrics are scalars); {} without an interval."""
    if ci is None or any(math.isnan(x) for x in ci):
        return {}
    return {f"{name}_ci95_low": float(ci[0]), f"{name}_ci95_high": float(ci[1])}
