"""The step table: every task a pipeline step may name, one module of ``tasks/steps`` each.

A literal table, checked by a test against the modules in ``tasks/steps`` (no decorator
registry). Modules named in the ``SLIMRAY_TASKS`` environment variable (comma-separated, each
with a ``TASKS`` table of its own) add their steps: your own tasks, or the engine tests' toys.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from tasks.steps import (
    benchmark,
    data,
    distill,
    export,
    hf_teacher,
    hf_text_data,
    infer,
    inference,
    lm_benchmark,
    lm_data,
    lm_distill,
    lm_export,
    lm_prune,
    lm_quantize,
    lm_teacher,
    lm_topk,
    load_model,
    multitask_report,
    pretrained,
    prune,
    prune_embedding,
    quantize,
    relabel,
    report,
    text_classifier,
    text_corpus,
    text_data,
    train,
)

TASKS: dict[str, Callable[..., Any]] = {
    "data": data.run,
    "train": train.run,
    "load_model": load_model.run,
    "infer": infer.run,
    "inference": inference.run,
    "distill": distill.run,
    "prune": prune.run,
    "prune_embedding": prune_embedding.run,
    "export": export.run,
    "quantize": quantize.run,
    "benchmark": benchmark.run,
    "report": report.run,
    "relabel": relabel.run,
    "multitask_report": multitask_report.run,
    "text_data": text_data.run,
    "pretrained": pretrained.run,
    "text_corpus": text_corpus.run,
    "text_classifier": text_classifier.run,
    "hf_text_data": hf_text_data.run,
    "hf_teacher": hf_teacher.run,
    "lm_teacher": lm_teacher.run,
    "lm_data": lm_data.run,
    "lm_prune": lm_prune.run,
    "lm_topk": lm_topk.run,
    "lm_distill": lm_distill.run,
    "lm_export": lm_export.run,
    "lm_quantize": lm_quantize.run,
    "lm_benchmark": lm_benchmark.run,
}

EXTRA_TASKS_ENV = "SLIMRAY_TASKS"


def task_table() -> dict[str, Callable[..., Any]]:
    """``TASKS`` plus the ``TASKS`` of every module named in ``SLIMRAY_TASKS``."""
    table = dict(TASKS)
    for name in filter(None, (n.strip() for n in os.environ.get(EXTRA_TASKS_ENV, "").split(","))):
        try:
            extra = importlib.import_module(name).TASKS
        except (ImportError, AttributeError) as e:
            raise ValueError(f"{EXTRA_TASKS_ENV}: module '{name}' has no TASKS table ({e})") from None
        clash = sorted(set(extra) & set(TASKS))
        if clash:
            raise ValueError(f"{EXTRA_TASKS_ENV}: module '{name}' redefines the step(s) {clash}")
        table.update(extra)
    return table
