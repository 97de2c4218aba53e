"""The ``multitask_report`` step: per-task test accuracy of the multi-task student against each task's
teacher and against a single-task student of the same trunk (``tasks/training/multitask.py``).

For task ``k`` (head ``k`` of the student, ``teachers[k]``, ``singles[k]``) the labels are derived
from ``data.y_test`` by the head's label map, so every model is scored on the same rows. The table
goes to the pipeline's run (``Publication``: ``multitask.md``, the description, headline metrics
``<task>.student_test_acc``, ``<task>.teacher_test_acc``, ``<task>.single_test_acc``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from tasks.core.checks import at_least
from tasks.core.context import StepContext
from tasks.core.types import Dataset, ModelArtifact, Publication, Report
from tasks.models.build import count_params, load_model
from tasks.models.multihead import MULTIHEAD, MultiHead, derive_labels, head_accuracies
from tasks.training.loop import predict


@dataclass
class MultitaskReportConfig:
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        at_least("eval_batch_size", self.eval_batch_size, 1)


def _acc(art: ModelArtifact, x: torch.Tensor, y: torch.Tensor, trusted: tuple[str, ...], bs: int) -> float:
    net = load_model(art, trusted)
    return float((predict(net, x, bs).argmax(1) == y).float().mean())


def _markdown(rows: list[dict], student: str, params: dict[str, int]) -> str:
    lines = [
        f"## Multi-task distillation: `{student}` ({params.get(student, 0):,} params)",
        "",
        "| task | student (multi-task) | teacher | single-task student | student - teacher | student - single |",
        "|---|---|---|---|---|---|",
    ]

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.2f}%"

    def pts(a: float, b: float | None) -> str:
        return "–" if b is None else f"{100 * (a - b):+.2f} pts"

    for r in rows:
        lines.append(
            f"| {r['task']} | {pct(r['student'])} | {pct(r['teacher'])} ({r['teacher_name']}) "
            f"| {pct(r['single'])} | {pts(r['student'], r['teacher'])} | {pts(r['student'], r['single'])} |"
        )
    lines += ["", "Params: " + ", ".join(f"`{k}` {v:,}" for k, v in params.items())]
    return "\n".join(lines) + "\n"


def run(
    data: Dataset,
    student: ModelArtifact,
    teachers: list[ModelArtifact],
    singles: list[ModelArtifact] | None = None,
    *,
    cfg: MultitaskReportConfig,
    ctx: StepContext,
) -> Report:
    """Per-task test accuracy of ``student`` (a ``MultiHead``) vs ``teachers[k]`` and ``singles[k]``."""
    if student.arch.get("_target_") != MULTIHEAD:
        raise ValueError(f"multitask_report.student: '{student.name}' is not a {MULTIHEAD} model")
    singles = list(singles or [])
    heads = list(student.arch["heads"])
    if len(teachers) != len(heads) or (singles and len(singles) != len(heads)):
        raise ValueError(
            f"multitask_report: the student has {len(heads)} heads {heads}, got {len(teachers)} teacher(s) "
            f"and {len(singles)} single-task student(s)"
        )
    trusted = (*ctx.trusted_targets, MULTIHEAD)  # our own class; its trunk is rebuilt from the zoo only
    net = load_model(student, trusted)
    assert isinstance(net, MultiHead)
    student_acc = head_accuracies(net, data.x_test, data.y_test)
    rows, params = [], {student.name: count_params(net)}
    bs = cfg.eval_batch_size
    for k, head in enumerate(heads):
        y = derive_labels(data.y_test, head)
        t_acc = _acc(teachers[k], data.x_test, y, ctx.trusted_targets, bs)
        s_acc = _acc(singles[k], data.x_test, y, ctx.trusted_targets, bs) if singles else None
        for art in [teachers[k]] + ([singles[k]] if singles else []):
            params[art.name] = count_params(load_model(art, ctx.trusted_targets))
        rows.append(
            {"task": head, "student": student_acc[head], "teacher": t_acc, "teacher_name": teachers[k].name}
            | {"single": s_acc, "single_name": singles[k].name if singles else None}
        )
    metrics = {f"{r['task']}.{who}_test_acc": r[who] for r in rows for who in ("student", "teacher", "single")}
    metrics = {k: float(v) for k, v in metrics.items() if v is not None}
    ctx.log_metrics(metrics)
    md = _markdown(rows, student.name, params)
    files = {"multitask.md": md.encode(), "multitask.json": json.dumps({"tasks": rows, "params": params}).encode()}
    publish = Publication(files=dict(files), metrics=metrics, description=md, console=md)
    return Report(data={"tasks": rows, "params": params}, files=files, publish=publish)
