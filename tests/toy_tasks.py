"""Tiny tasks that exercise the engine (the `demo` pipeline and the engine tests).

They follow the same contract as the real tasks: pure functions, a typed config, a context.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tasks.core.context import StepContext
from tasks.core.types import Publication, Registration, Report, Value


@dataclass
class SourceConfig:
    value: float = 1.0
    size: int = 4


@dataclass
class AddConfig:
    amount: float = 1.0
    scale: float = 1.0


@dataclass
class SleepConfig:
    seconds: float = 1.0
    busy: bool = False  # spin a CPU instead of sleeping (a loaded machine, for interrupt tests)


@dataclass
class LogConfig:
    count: int = 20  # metric values to log, one per `every` seconds
    every: float = 0.1


@dataclass
class FailConfig:
    message: str = "this step fails on purpose"


@dataclass
class SumConfig:
    metric: str = "total"


def source(*, cfg: SourceConfig, ctx: StepContext) -> Value:
    """A constant vector."""
    out = torch.full((cfg.size,), float(cfg.value))
    ctx.log_metrics({"value": cfg.value})
    return Value(out, {"from": ctx.step})


def add(x: Value, *, cfg: AddConfig, ctx: StepContext) -> Value:
    """(x + amount) * scale; logs ``score`` = the mean, which sweep selection can use."""
    out = (x.value + cfg.amount) * cfg.scale
    for i in range(3):
        ctx.log_metrics({"progress": (i + 1) / 3}, step=i)
    ctx.log_metrics({"score": float(out.mean())})
    return Value(out, {"from": ctx.step})


def sleep(x: Value, *, cfg: SleepConfig, ctx: StepContext) -> Value:
    """Waits, then passes ``x`` on: two of these prove steps run concurrently."""
    ctx.progress(f"sleeping {cfg.seconds} s" + (" (busy)" if cfg.busy else ""))
    end = time.monotonic() + cfg.seconds
    while cfg.busy and time.monotonic() < end:
        sum(i * i for i in range(10_000))
    time.sleep(max(0.0, end - time.monotonic()))
    ctx.log_metrics({"slept": cfg.seconds})
    return Value(x.value.clone(), {"from": ctx.step})


def log(x: Value, *, cfg: LogConfig, ctx: StepContext) -> Value:
    """Logs ``count`` values of ``tick`` (steps 0..count-1) over time: the fault tests count
    every one of them in MLflow after servers went away and came back mid-step."""
    for i in range(cfg.count):
        ctx.log_metrics({"tick": float(i)}, step=i)
        time.sleep(cfg.every)
    ctx.log_metrics({"logged": float(cfg.count)})
    return Value(x.value.clone(), {"from": ctx.step})


def fail(x: Value, *, cfg: FailConfig, ctx: StepContext) -> Value:
    raise RuntimeError(cfg.message)


def total(xs: list[Value], *, cfg: SumConfig, ctx: StepContext) -> Value:
    """Sum of all inputs (a fan-in step: takes a list, e.g. every sweep trial)."""
    out = torch.stack([x.value for x in xs]).sum(0)
    ctx.log_metrics({cfg.metric: float(out.sum()), "n_inputs": len(xs)})
    return Value(out, {"n": len(xs)})


@dataclass
class PublishConfig:
    registry_name: str = "demo-model"
    alias: str = "candidate"


def _identity_onnx(width: int) -> bytes:
    """The smallest deployable model: y = x, batch x ``width`` floats."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "identity", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def publish(x: Value, *, cfg: PublishConfig, ctx: StepContext) -> Report:
    """A leaf step that publishes on the parent run (the engine's publishing contract, in small):
    a file, a headline metric, a description, console text and a registered model."""
    total = float(x.value.sum())
    ctx.log_metrics({"total": total})
    pub = Publication(
        files={"summary.md": f"total = {total}\n".encode()},
        metrics={"headline.total": total},
        description=f"## Demo\n\nThe total is **{total}**.",
        console=f"demo total: {total}",
        models=[Registration(cfg.registry_name, _identity_onnx(len(x.value)), cfg.alias)],
    )
    return Report(data={"total": total}, publish=pub)


# Added to the step table by SLIMRAY_TASKS=tests.toy_tasks (tests/conftest.py sets it).
TASKS = {
    "toy_source": source,
    "toy_add": add,
    "toy_sleep": sleep,
    "toy_log": log,
    "toy_fail": fail,
    "toy_sum": total,
    "toy_publish": publish,
}
