"""Tiny tasks that exercise the engine (the `demo` pipeline and the engine tests).

They follow the same contract as the real tasks: pure functions, a typed config, a context.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tasks.context import StepContext
from tasks.types import Value


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
    time.sleep(cfg.seconds)
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
