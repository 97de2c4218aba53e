"""The ``report`` step: turn the benchmark into a Pareto plot, a Markdown table, headline metrics and a
model to register, all returned in ``Report.publish`` for the engine to put on the pipeline's run.

The benchmark lists every candidate (teacher, students, pruned, quantized) with accuracy, size and
speed. A candidate is on the Pareto frontier when no other candidate is at least as good on every
objective and strictly better on one; the plot shows accuracy against throughput and against size
(both log axes), so the trade-off the pipeline's selection made is visible at a glance. Only the
frontier, the selected model and the teacher are labelled; the others are told apart by their
kind's colour (legend) and listed in the table (``tasks.reporting.tables``).

Headline metrics (``Publication.metrics``, shown in MLflow's runs table so executions compare at a
glance; a metric is left out when its value is unknown):

* ``selected.<field>`` and ``teacher.<field>`` for ``test_acc``, ``val_acc`` (and their macro-F1),
  ``size_bytes``, ``throughput_b256`` and ``latency_ms_p50_b1`` of the selected model and of the teacher;
* ``selected_vs_teacher.<ratio>`` for every ratio of ``tasks.core.types.Comparison``
  (``test_acc_delta``, ``throughput_speedup``, ``latency_speedup_b1``, ``size_reduction``,
  ``params_reduction``, ``nonzero_params_reduction``, ``flops_reduction``; > 1 is better), the
  same numbers as ``targets.selected_vs_teacher`` in ``benchmark.json``.

The selected model's ONNX is returned as a ``Registration`` under alias ``candidate``; promotion
is a human's call. The selected model is the benchmark's (``bench.selected``): when that is not the
``selected`` input (which the benchmark rejected, or benchmark chose among ``candidates``), the
candidate of that name is registered. A rejected candidate is listed with the parity figures it
was rejected on and never registered. The registration names the selected benchmark *row*
(``Registration.source``): for a row of another runtime (``X@openvino``) the version's tags, its
runtime and its logged model's card are that row's, and the ONNX is its candidate ``X``'s.

Classification benchmarks add a per-class table of the selected model and the teacher
(``tasks.reporting.classes``: precision, recall, F1 and support on the test split, the classes
named by the models' ``id2label`` when they name them).

Embedding benchmarks (``bench.task == "embedding"``) have no accuracy: the quality axis is the
evaluation split's ``cos_mean`` to the reference, and the table shows cosine mean/min and top-1
retrieval agreement instead of accuracy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from tasks.core.checks import at_least, fraction
from tasks.core.context import StepContext
from tasks.core.types import BenchmarkReport, ModelArtifact, Publication, Registration, Report
from tasks.evaluation.evidence import interval_metrics
from tasks.models.build import load_model, sample_shape
from tasks.reporting import deploy
from tasks.reporting.cards import model_cards
from tasks.reporting.classes import class_names, per_class_markdown
from tasks.reporting.kbit import kbit_section
from tasks.reporting.plots import pareto_figure, png_bytes, quality_key
from tasks.reporting.tables import markdown, summary_markdown
from tasks.runtime.onnx import to_onnx
from tasks.runtime.openvino import runtime_of
from tasks.serving.model import serving_files

HEADLINE_FIELDS = (
    "test_acc",
    "val_acc",
    "test_macro_f1",
    "val_macro_f1",
    "size_bytes",
    "throughput_b256",
    "latency_ms_p50_b1",
    "cos_mean",
    "cos_min",
)


@dataclass
class ReportConfig:
    pipeline: str = "compress"  # names the registered model: <pipeline>-<dataset>
    registry_name: str = ""  # overrides the registered model's name when set
    alias: str = "candidate"
    dpi: int = 110
    max_acc_drop: float | None = None  # accuracy budget vs the teacher (0.01 = 1 point); None: not checked
    tokenizer: str = ""  # a text model's tokenizer (folder or package): its files are stored with the version
    max_length: int = 0  # tokens per text when served (0: the tokenizer's own limit)

    def __post_init__(self) -> None:
        at_least("dpi", self.dpi, 1)
        if self.max_acc_drop is not None:
            fraction("max_acc_drop", self.max_acc_drop, open_high=True)
        at_least("max_length", self.max_length, 0)


def pareto_front(points: list, objectives: dict[str, str]) -> list[str]:
    """Names of the non-dominated points; ``objectives`` maps an attribute to "max" or "min".

    ``a`` dominates ``b`` when it is no worse on every objective and better on at least one.
    Points missing an objective value (None) are left out. Input order is kept.
    """
    sign = {k: 1.0 if d == "max" else -1.0 for k, d in objectives.items()}
    pts = [p for p in points if all(getattr(p, k) is not None for k in objectives)]
    vals = [tuple(sign[k] * float(getattr(p, k)) for k in objectives) for p in pts]

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [p.name for p, v in zip(pts, vals) if not any(dominates(w, v) for w in vals)]


def headline_metrics(bench: BenchmarkReport) -> dict[str, float]:
    """The selected model's and the teacher's numbers and their ratios (see the module docstring)."""
    out: dict[str, float] = {}
    for prefix, row in (("selected", bench.selected), ("teacher", bench.teacher)):
        for key in HEADLINE_FIELDS if row is not None else ():
            if getattr(row, key) is not None:
                out[f"{prefix}.{key}"] = float(getattr(row, key))
        out |= {f"{prefix}.{k}": v for k, v in (interval_metrics(row) if row is not None else {}).items()}
    cmp = bench.targets.selected_vs_teacher
    for key, value in (asdict(cmp) if cmp is not None else {}).items():
        if isinstance(value, list):  # an interval: MLflow metrics are scalars
            out[f"selected_vs_teacher.{key}_low"], out[f"selected_vs_teacher.{key}_high"] = map(float, value)
        elif key not in ("candidate", "reference", "meets_target") and value is not None:
            out[f"selected_vs_teacher.{key}"] = float(value)
    return out


def _onnx_bytes(selected: ModelArtifact, trusted: tuple[str, ...] = ()) -> bytes:
    """The artifact's ONNX, or an export of its torch model at batch 1 when it has none."""
    if selected.onnx is not None:
        return selected.onnx
    example = torch.zeros(1, *sample_shape(selected.arch))
    return to_onnx(load_model(selected, trusted), example)


def _registered_model(
    bench: BenchmarkReport, selected: ModelArtifact | None, candidates: list[ModelArtifact], ctx: StepContext
) -> tuple[ModelArtifact | None, str]:
    """The artifact of the benchmark's selected model (never a rejected one) and the line saying which."""
    found, line = deploy.pick(bench, selected, candidates)
    if found is None or found is not selected:  # not what the report is wired to: say so
        ctx.note(line)
    return found, line


def budget_line(bench: BenchmarkReport, max_acc_drop: float | None) -> str:
    """One line when the selected (deployed) model is more than ``max_acc_drop`` below the
    teacher in test accuracy, else "": a run that misses its budget must not finish silently."""
    c = bench.targets.selected_vs_teacher
    if max_acc_drop is None or c is None or c.test_acc_delta is None or c.test_acc_delta >= -max_acc_drop:
        return ""
    return (
        f"BUDGET MISSED: the selected model '{c.candidate}' is {-c.test_acc_delta * 100:.1f} points below "
        f"the teacher '{c.reference}' in test accuracy (budget {max_acc_drop * 100:.1f})"
    )


def run(
    bench: BenchmarkReport,
    selected: ModelArtifact | None = None,
    kbit: list[ModelArtifact] | None = None,
    candidates: list[ModelArtifact] | None = None,
    *,
    cfg: ReportConfig,
    ctx: StepContext,
) -> Report:
    """Plot, table, headline metrics and ``selected``'s ONNX, returned for the pipeline run.

    ``kbit`` (the fake k-bit models) adds accuracy against bits per quantizer (``tasks.reporting.kbit``).
    """
    if not bench.candidates:
        raise ValueError("report.bench: the benchmark has no candidates")
    q = quality_key(bench)
    front = pareto_front(bench.candidates, {q: "max", "throughput_b256": "max"})
    front_size = pareto_front(bench.candidates, {q: "max", "size_bytes": "min"})
    selected, reg_line = _registered_model(bench, selected, candidates or [], ctx)
    kbit_files, kbit_md, kbit_data = kbit_section(bench, list(kbit or []), cfg.dpi)
    per_class = per_class_markdown(bench, class_names([selected, *(candidates or [])]))
    md = markdown(bench, front) + "".join("\n" + part for part in (per_class, kbit_md) if part)
    miss = budget_line(bench, cfg.max_acc_drop)
    md = f"**{miss}**\n\n{md}" if miss else md
    files = {"pareto.png": png_bytes(pareto_figure(bench, front, front_size), cfg.dpi), "report.md": md.encode()}
    files.update(kbit_files)
    models, registered = [], None
    name = cfg.registry_name or f"{cfg.pipeline}-{bench.dataset}"
    if selected is not None:
        onnx = _onnx_bytes(selected, ctx.trusted_targets)
        beside = serving_files(onnx, bench.task, cfg.tokenizer, cfg.max_length)
        row = bench.selected  # the selected ROW (``X@openvino``): the version's figures, runtime and card
        runtime = runtime_of(row) if row else "onnxruntime"  # what it was selected for
        source = row.name if row else selected.name
        reg = Registration(name, onnx, cfg.alias, source=source, files=beside, runtime=runtime)
        models, registered = [reg], f"{name}@{cfg.alias}"
    headline = headline_metrics(bench)
    if cfg.max_acc_drop is not None and bench.targets.selected_vs_teacher is not None:
        headline["budget_met"] = float(not miss)
    ctx.log_metrics({"candidates": len(bench.candidates), "pareto_size": len(front), **headline})
    summary = summary_markdown(bench, front)
    publish = Publication(
        files=dict(files),
        metrics=headline,
        description=f"**{miss}**\n\n{summary}" if miss else summary,
        console=(f"{md}\n{miss}" if miss else md) + f"\n{reg_line}\n",
        models=models,
        candidates=model_cards(bench),  # every candidate as a logged model (tasks.reporting.cards)
        tags={deploy.REGISTRY_TAG: name} | ({} if selected is not None else {deploy.NOT_REGISTERED_TAG: reg_line}),
    )
    data = {"pareto_front": front, "pareto_front_size": front_size, "registered": registered, **kbit_data}
    data["registration"] = reg_line
    return Report(data=data, files=files, publish=publish)
