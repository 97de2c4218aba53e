"""Sweep selection: which trial a sweep step hands downstream.

    select: {metric: throughput, mode: max, where: "val_acc >= student_kd.val_acc - 0.01"}

``where`` compares a trial metric with a number, or with an upstream step's metric plus or
minus a number (an accuracy budget against the teacher: ``val_acc >= teacher.val_acc - 0.01``).
If no trial meets it, the trial closest to meeting it *as judged* is taken (the value the rule
compares, in the operator's direction: with ``>=`` the highest judged value, with ``<=`` the lowest)
and the note says so in one line starting ``BUDGET MISSED``, naming that trial, its value and how
far it fell short: the pipeline goes on, and the console and MLflow show why.

``confidence: 0.95`` evaluates ``where`` conservatively: the side of the 95% interval that is
worst for the trial must meet it. A trial's interval is its ``<metric>_ci95_low`` / ``_high``
(e.g. ``val_acc_ci95_low``, which ``prune`` logs); against an upstream metric the difference's
interval is Newcombe's from both sides' intervals (an upstream metric without one counts as
exact). A trial without an interval is judged on its point value, and the note names it. The
fallback ranks by the same judged value: against 0.94, a trial at 0.952 with a lower bound of 0.935
is closer than one at 0.939 with a lower bound of 0.925 (the point values would say the opposite).
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from pipelines.config.errors import SpecError
from pipelines.config.schema import SelectConfig, container, typed
from tasks.evaluation import stats

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
WHERE_RE = re.compile(r"^\s*([\w.]+)\s*(>=|<=|>|<|==)\s*(.+?)\s*$")
OPERAND_RE = re.compile(r"^(?:([A-Za-z_][\w-]*)\.(\w+)|(-?[\d.eE+-]+))(?:\s*([+-])\s*([\d.eE+-]+))?$")


@dataclass
class Where:
    metric: str
    op: str
    ref_step: str | None  # compare against an upstream step's metric ...
    ref_metric: str | None
    constant: float  # ... plus this constant (or the constant alone)

    def bound(self, upstream: dict[str, dict]) -> float:
        ref = upstream.get(self.ref_step, {}).get(self.ref_metric, math.nan) if self.ref_step else 0.0
        return self.constant + ref


@dataclass
class Select:
    metric: str
    mode: str = "max"
    where: Where | None = None
    confidence: float = 0.0


def parse_where(text: str, path: str) -> Where:
    m = WHERE_RE.match(text)
    o = OPERAND_RE.match(m.group(3)) if m else None
    if not m or not o:
        raise SpecError(path, f"cannot parse '{text}' (e.g. 'val_acc >= 0.9' or 'val_acc >= student.val_acc - 0.01')")
    const = float(o.group(3)) if o.group(3) else 0.0
    if o.group(4):
        const += float(o.group(5)) * (1 if o.group(4) == "+" else -1)
    return Where(m.group(1), m.group(2), o.group(1), o.group(2), const)


def parse_select(node, path: str) -> Select:
    """A select rule from a mapping or ``SelectConfig`` (unknown keys, a missing metric and a
    mode other than max/min are ``SpecError``s naming the key)."""
    rule = node if isinstance(node, SelectConfig) else typed(SelectConfig, container(node, path), path, as_object=True)
    where = parse_where(rule.where, f"{path}.where") if rule.where else None
    if rule.confidence not in (0.0, 0.95):
        raise SpecError(f"{path}.confidence", f"must be 0 (the point value) or 0.95, got {rule.confidence}")
    return Select(rule.metric, rule.mode.value, where, rule.confidence)


def miss_note(w: Where, bound: float, index: int, point: float, judged: float, confidence: float) -> str:
    """The one line saying a sweep's ``where`` (e.g. the accuracy budget) was missed: the bound, and
    the trial that came closest as ``where`` judges it (``judged``: its interval's bound at
    ``confidence``, else its point value) with how far it fell short."""
    ref = (
        f" ({w.ref_step}.{w.ref_metric} {'+' if w.constant >= 0 else '-'} {abs(w.constant):.4g})" if w.ref_step else ""
    )
    at = f" at {confidence:.0%} confidence" if confidence else ""
    end = {">=": "lower", ">": "lower", "<=": "upper", "<": "upper"}.get(w.op)
    shown = f", {confidence:.0%} {end} bound {judged:.4g}" if end and judged != point and not math.isnan(judged) else ""
    short = f": {shortfall(w.op, judged, bound):.4g} short" if not math.isnan(judged) else ""
    took = f"took the closest, trial {index} ({w.metric} {point:.4g}{shown}{short})"
    return f"BUDGET MISSED: no trial meets '{w.metric} {w.op} {bound:.4g}'{ref}{at}; {took}"


def shortfall(op: str, judged: float, bound: float) -> float:
    """How far a judged value is from meeting ``op bound`` (<= 0: it meets it; NaN counts as +inf):
    ``>=``/``>`` ``bound - judged``, ``<=``/``<`` ``judged - bound``, ``==`` the distance."""
    if math.isnan(judged) or math.isnan(bound):
        return math.inf
    if op in (">=", ">"):
        return bound - judged
    if op in ("<=", "<"):
        return judged - bound
    return abs(judged - bound)


def choose(rule: Select | None, summaries: dict[int, dict], upstream: dict[str, dict]) -> tuple[int, str]:
    """(index of the chosen trial, note) among finished trials ``{index: metric summary}``."""
    ok = sorted(summaries)
    passed = [i for i in ok if not summaries[i].get("rejected", 0.0)]  # failed a parity gate: never chosen
    if not passed:
        return ok[0], "every trial was rejected by its parity gate: took the first"
    ok = passed
    if rule is None:
        return ok[0], ""
    value = lambda i, key: summaries[i].get(key, math.nan)  # noqa: E731
    eligible = [i for i in ok if not math.isnan(value(i, rule.metric))]
    note = ""
    if rule.where is not None:
        w, bound = rule.where, rule.where.bound(upstream)
        judged = {i: judged_value(w, summaries[i], upstream, rule.confidence) for i in eligible}
        passing = [i for i in eligible if OPS[w.op](judged[i][0], bound)]
        note = confidence_note(w, [i for i in eligible if not judged[i][1]], rule.confidence)
        if not passing:  # the closest as judged (the interval's bound at 95%), in the operator's direction
            near = {i: judged_value(w, summaries[i], upstream, rule.confidence)[0] for i in ok}
            closest = min(ok, key=lambda i: shortfall(w.op, near[i], bound))
            return closest, miss_note(w, bound, closest, value(closest, w.metric), near[closest], rule.confidence)
        eligible = passing
    if not eligible:
        return ok[0], f"no trial reported '{rule.metric}': took the first"
    pick = max if rule.mode == "max" else min
    return pick(eligible, key=lambda i: value(i, rule.metric)), note


def _interval(summary: dict, metric: str) -> list[float] | None:
    low, high = summary.get(f"{metric}_ci95_low"), summary.get(f"{metric}_ci95_high")
    return None if low is None or high is None else [float(low), float(high)]


def judged_value(w: Where, summary: dict, upstream: dict[str, dict], confidence: float) -> tuple[float, bool]:
    """The trial's value as ``where`` judges it: the point value, or with ``confidence`` the end of
    its interval that is worst for the trial (``>``: the lower bound), shifted so that comparing it
    with ``w.bound`` tests the interval of the difference (Newcombe's when the upstream metric has
    an interval too). Returns (value, whether an interval was used)."""
    point = summary.get(w.metric, math.nan)
    ci = _interval(summary, w.metric) if confidence else None
    if ci is None:
        return point, False
    ref_point = upstream.get(w.ref_step, {}).get(w.ref_metric, math.nan) if w.ref_step else 0.0
    ref_ci = _interval(upstream.get(w.ref_step, {}), w.ref_metric or "") if w.ref_step else None
    diff = stats.unpaired_difference(point, ci, ref_point, ref_ci or [ref_point, ref_point])
    end = diff[0] if w.op in (">=", ">") else diff[1] if w.op in ("<=", "<") else point - ref_point
    return end + ref_point, True


def confidence_note(w: Where, without: list[int], confidence: float) -> str:
    """A note naming the trials judged on the point value because they logged no interval."""
    if not confidence or not without:
        return ""
    return f"no {w.metric}_ci95_low/_high for trial(s) {without}: judged on the point value"
