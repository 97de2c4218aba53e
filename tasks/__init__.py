"""The task table: every task a pipeline step may name. A literal table, checked by a test
against the modules in this package (no decorator registry)."""

from collections.abc import Callable
from typing import Any

from tasks import (
    benchmark,
    data,
    distill,
    export,
    infer,
    inference,
    multitask,
    multitask_report,
    prune,
    prune_embedding,
    quantize,
    report,
    teacher,
    text,
    toy,
    train,
    transformer,
)

TASKS: dict[str, Callable[..., Any]] = {
    "data": data.run,
    "train": train.run,
    "load_model": teacher.run,
    "infer": infer.run,
    "inference": inference.run,
    "distill": distill.run,
    "prune": prune.run,
    "prune_embedding": prune_embedding.run,
    "export": export.run,
    "quantize": quantize.run,
    "benchmark": benchmark.run,
    "report": report.run,
    "relabel": multitask.relabel,
    "multitask_report": multitask_report.run,
    "text_data": text.run,
    "pretrained": transformer.run,
    # the engine's own fixtures (used by the `demo` pipeline and the engine tests)
    "toy_source": toy.source,
    "toy_add": toy.add,
    "toy_sleep": toy.sleep,
    "toy_log": toy.log,
    "toy_fail": toy.fail,
    "toy_sum": toy.total,
    "toy_publish": toy.publish,
}
