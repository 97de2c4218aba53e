"""The per-row outcomes behind the benchmark's quality figures, and the intervals drawn from them.

The benchmark measures every candidate on the same rows, so a figure and every comparison of two
candidates can carry its uncertainty (``tasks.evaluation.stats``):

* classification: each row is right or wrong (``correct_rows``); accuracy gets a Wilson interval
  over the rows (``test_acc_ci95``, ``val_acc_ci95``), and two models on the same rows the paired
  table (``paired_vs_teacher``), an Agresti-Min interval of the difference and McNemar's p-value.
  Each row's top-1 class id is kept too (``<split>_pred`` beside ``<split>``, never the logits):
  macro-F1 (``sklearn.metrics``, over the classes present in the split's labels; a class never
  predicted has F1 0) with a seeded bootstrap interval over the rows (``stats.bootstrap_macro_f1``),
  and the test split's precision, recall, F1 and support per class (``per_class``);
* embedding: each row has its cosine to the reference's vector (``cosine_rows``); ``cos_mean`` gets
  a bootstrap interval over the rows, ``top1_agree`` a Wilson one, and two models the paired
  bootstrap of their per-row cosines. On fewer rows than ``stats.MIN_BOOTSTRAP_ROWS`` the
  interval is a cosine's whole range ([-1, 1], a difference's [-2, 2]): too few rows to say.

``Evidence`` (candidate name -> split, or ``<split>_pred`` -> per-row array) lives in memory during
the benchmark; what is kept in ``benchmark.json`` is the figures, the intervals, the paired counts,
``per_class`` and ``runner_up``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.core.types import BenchmarkReport, BenchmarkRow, Dataset, Targets
from tasks.evaluation import stats

Evidence = dict[str, dict[str, np.ndarray]]
COSINE_RANGE = (-1.0, 1.0)  # a cosine's whole range: its interval on too few rows for a bootstrap
COSINE_DIFF_RANGE = (-2.0, 2.0)
SPLITS = ("test", "val")


def predicted_rows(logits: Tensor | np.ndarray) -> np.ndarray:
    """Per row: the top-1 class id (int64)."""
    out = np.asarray(logits)
    return out.argmax(1).astype(np.int64) if len(out) else np.zeros(0, dtype=np.int64)


def correct_rows(logits: Tensor | np.ndarray, labels: Tensor) -> np.ndarray:
    """Per row: is the top-1 prediction the label (bool)."""
    pred = predicted_rows(logits) if len(labels) else np.zeros(0, dtype=int)
    return pred == torch.as_tensor(labels).cpu().numpy()


def labels_of(data: Dataset) -> dict[str, np.ndarray]:
    """The labels of the evaluation (``test``) and validation (``val``) splits."""
    return {"test": data.y_test.cpu().numpy(), "val": data.y_val.cpu().numpy()}


def class_splits(logits: Mapping[str, Tensor | np.ndarray], labels: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per split of ``logits``: each row right or wrong (``<split>``) and its top-1 class id
    (``<split>_pred``): what every classification figure is drawn from, without the logits."""
    out: dict[str, np.ndarray] = {}
    for split, z in logits.items():
        out[f"{split}_pred"] = predicted_rows(z)
        out[split] = out[f"{split}_pred"] == np.asarray(labels[split])
    return out


def macro_f1_fields(split: str, labels: np.ndarray, predicted: np.ndarray) -> dict:
    """``<split>_macro_f1`` and its bootstrap ``_ci95``; for ``test`` also ``per_class``:
    {class id (str, as in JSON): precision, recall, f1, support}, over the classes in ``labels``."""
    from sklearn.metrics import precision_recall_fscore_support  # scipy-heavy: only where it is measured

    y, p = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if y.size == 0:
        return {f"{split}_macro_f1": math.nan, f"{split}_macro_f1_ci95": list(stats.NAN2)}
    classes = np.unique(y)
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=classes, zero_division=0.0)
    out = {f"{split}_macro_f1": float(np.mean(f1)), f"{split}_macro_f1_ci95": stats.bootstrap_macro_f1(y, p)}
    if split == "test":
        figures = zip(classes, prec, rec, f1, support)
        out["per_class"] = {
            str(c): {"precision": float(a), "recall": float(b), "f1": float(f), "support": int(n)}
            for c, a, b, f, n in figures
        }
    return out


def cosine_rows(out: Tensor, ref: Tensor) -> np.ndarray:
    """Per row: cosine similarity of ``out`` with the reference's vector."""
    if len(out) == 0:
        return np.zeros(0)
    return F.cosine_similarity(torch.as_tensor(out).float(), torch.as_tensor(ref).float(), dim=1).numpy()


def classification_fields(rows: dict[str, np.ndarray], labels: dict[str, np.ndarray] | None = None) -> dict:
    """``test_acc``/``val_acc`` with their rows and Wilson intervals, from per-split ``correct_rows``;
    with the ``labels`` and the rows' class ids (``class_splits``), macro-F1 too (``macro_f1_fields``)."""
    out: dict = {}
    for split in SPLITS:
        v = rows[split]
        acc = float(v.mean()) if v.size else math.nan
        out |= {f"{split}_acc": acc, f"n_{split}": int(v.size), f"{split}_acc_ci95": stats.wilson(int(v.sum()), v.size)}
        if labels is not None and f"{split}_pred" in rows:
            out |= macro_f1_fields(split, labels[split], rows[f"{split}_pred"])
    return out


def embedding_fields(rows: dict[str, np.ndarray], top1_agree: float | None) -> dict:
    """Bootstrap intervals of the mean cosine per split and a Wilson one of ``top1_agree``."""
    n = int(rows["test"].size)
    top1 = None if top1_agree is None or math.isnan(top1_agree) else stats.proportion_ci(top1_agree, n)
    return {
        "n_test": n,
        "n_val": int(rows["val"].size),
        "cos_mean_ci95": stats.bootstrap_mean(rows["test"], bounds=COSINE_RANGE),
        "val_cos_mean_ci95": stats.bootstrap_mean(rows["val"], bounds=COSINE_RANGE),
        "top1_agree_ci95": top1,
    }


def set_fields(row: BenchmarkRow, fields: dict) -> None:
    for key, value in fields.items():
        setattr(row, key, value)


def compare(evidence: Evidence, cand: str, ref: str, split: str, task: str) -> dict | None:
    """``cand`` minus ``ref`` on the same rows of ``split``: delta, delta_ci95, p_value (None without rows)."""
    a, b = evidence.get(cand, {}).get(split), evidence.get(ref, {}).get(split)
    if a is None or b is None or a.shape != b.shape:
        return None
    if task == "classification":
        return stats.paired_difference(stats.paired_counts(b, a))
    return stats.paired_bootstrap(a, b, bounds=COSINE_DIFF_RANGE)


def pair_with_teacher(rows: list[BenchmarkRow], evidence: Evidence, task: str) -> None:
    """Classification: each row's paired table against the teacher, per split."""
    teacher = next((r.name for r in rows if r.kind == "teacher"), None)
    if task != "classification" or teacher not in evidence:
        return
    for r in rows:
        if r.name in evidence and r.name != teacher:
            r.paired_vs_teacher = {
                s: stats.paired_counts(evidence[teacher][s], evidence[r.name][s])
                for s in SPLITS
                if s in evidence[r.name]
            }


def annotate_targets(targets: Targets, evidence: Evidence) -> None:
    """The paired interval and McNemar p-value of every test-accuracy delta in ``targets`` (rows that
    are right or wrong: classification)."""
    cmps = ([targets.selected_vs_teacher] if targets.selected_vs_teacher else []) + list(targets.int8_vs_fp32)
    for c in cmps:
        rows = evidence.get(c.candidate, {}).get("test")
        if rows is None or rows.dtype != bool:
            continue
        d = compare(evidence, c.candidate, c.reference, "test", "classification")
        if d is not None:
            c.test_acc_delta_ci95, c.test_acc_delta_p = d["delta_ci95"], d["p_value"]


def runner_up(
    sel: BenchmarkRow, other: BenchmarkRow, evidence: Evidence, task: str, speed: tuple[bool | None, str]
) -> tuple[dict, str]:
    """The selected model against the runner-up: validation quality (paired) and ``speed``, the
    selection objective's verdict (``selection.speed_tied``: tied or not, None when unknown, and its
    words); the line says so when neither tells them apart ("" when one does)."""
    quality = compare(evidence, sel.name, other.name, "val", task)
    tied, s = speed
    same_quality = quality is None or quality["delta_ci95"][0] <= 0 <= quality["delta_ci95"][1]
    info = {"name": other.name, "val_quality": quality, "speed_tied": tied}
    info["distinguishable"] = not (same_quality and tied is not False)
    if info["distinguishable"]:
        return info, ""
    what, scale = ("val accuracy (points)", 100.0) if task == "classification" else ("val cosine", 1.0)
    q = (
        f"{what} {quality['delta'] * scale:+.4g} (95% interval {quality['delta_ci95'][0] * scale:+.4g} to "
        f"{quality['delta_ci95'][1] * scale:+.4g}, p = {quality['p_value']:.2g})"
        if quality
        else f"{what}: no paired rows"
    )
    size = (
        f"; taken as the smaller ({sel.size_bytes:,} vs {other.size_bytes:,} bytes)"
        if sel.size_bytes < other.size_bytes
        else ""
    )
    return info, f"NOT DISTINGUISHABLE: selected '{sel.name}' vs runner-up '{other.name}': {q}; {s}{size}"


CI_FIELDS = ("test_acc", "val_acc", "test_macro_f1", "val_macro_f1", "cos_mean", "val_cos_mean", "top1_agree")


def interval_metrics(row: BenchmarkRow) -> dict[str, float]:
    """``<field>_ci95_low`` / ``_high`` of every interval the row carries (MLflow metrics are scalars)."""
    out: dict[str, float] = {}
    for key in CI_FIELDS:
        ci = getattr(row, f"{key}_ci95")
        if ci and not any(math.isnan(x) for x in ci):
            out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = float(ci[0]), float(ci[1])
    return out


def with_interval(row: BenchmarkRow, key: str, fmt) -> str:
    """``fmt(key, value)`` and, where the row has one, its 95% interval in the same format."""
    text = fmt(key, getattr(row, key))
    ci = getattr(row, f"{key}_ci95", None)
    if not ci or any(math.isnan(x) for x in ci):
        return text
    return f"{text} [{fmt(key, ci[0])}, {fmt(key, ci[1])}]"


def delta_interval(c) -> str:
    """`` (95% interval a to b, McNemar p = p)`` of a ``Comparison``'s accuracy delta, or ""."""
    if not c.test_acc_delta_ci95 or c.test_acc_delta_p is None:
        return ""
    low, high = (100 * x for x in c.test_acc_delta_ci95)
    return f" (95% interval {low:+.2f} to {high:+.2f}, McNemar p = {c.test_acc_delta_p:.2g})"


def spread_note(report: BenchmarkReport) -> str:
    """`` (IQR over rounds: selected a–b, teacher c–d /s)`` from the throughput spreads, or ""."""
    rows = [r for r in (report.selected, report.teacher) if r is not None]
    spreads = [(r.name, r.timing.get("throughput_b256") or {}) for r in rows]
    if len(spreads) < 2 or any(s.get("iqr") is None for _, s in spreads):
        return ""
    parts = ", ".join(f"{name} {s['iqr'][0]:,.0f}–{s['iqr'][1]:,.0f}" for name, s in spreads)
    return f" (IQR over {spreads[0][1].get('over', 'rounds')}: {parts} /s)"
