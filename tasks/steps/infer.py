"""The ``infer`` task: a teacher's logits (and optional intermediate features) over the training
inputs and the transfer pool, computed once so that distillation runs never rerun the teacher.

With ``replicas: 1`` it runs in-process on ``ctx.device``; with ``replicas > 1`` the batches go
through ``ctx.map_batches``, which the engine runs on Ray Data: an actor pool (each actor loads
the model once, ``TeacherBatchFn``) with backpressure, ``window`` blocks in flight per actor and
restarts of a dead actor (pipelines/scale/batch.py). Ray Data's start-up costs seconds, so a
replica pool pays off for inputs whose inference takes longer than that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tasks.core.checks import at_least, require
from tasks.core.context import StepContext
from tasks.core.types import Dataset, Logits, ModelArtifact
from tasks.models.build import load_model
from tasks.models.hooks import capture


@dataclass
class InferConfig:
    batch_size: int = 1024
    features: list[str] = field(default_factory=list)  # module names to capture, e.g. ["features.8"]
    replicas: int = 1  # > 1: data-parallel replica actors (each loads the model once)
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0  # fractional: 0.5 puts two replicas on one GPU
    min_replicas: int = 0  # > 0: the pool grows from this many actors to `replicas` on demand
    window: int = 0  # blocks in flight per actor (0: Ray Data's default)

    def __post_init__(self) -> None:
        at_least("batch_size", self.batch_size, 1)
        at_least("replicas", self.replicas, 1)
        at_least("cpus_per_replica", self.cpus_per_replica, 0)
        at_least("gpus_per_replica", self.gpus_per_replica, 0)
        at_least("window", self.window, 0)
        require("min_replicas", 0 <= self.min_replicas <= self.replicas, "must be between 0 and replicas")


class TeacherBatchFn:
    """Picklable factory: ``TeacherBatchFn(...)()`` loads the model once (per worker) and returns a
    function mapping a batch to ``[B, num_classes + sum(feature sizes)]`` (logits, then flattened
    features), so one tensor carries everything through ``map_batches``."""

    def __init__(self, model: ModelArtifact, features: list[str], device: str = "cpu", trusted: tuple[str, ...] = ()):
        self.model, self.features, self.device, self.trusted = model, list(features), device, tuple(trusted)

    def __call__(self):
        model = load_model(self.model, self.trusted).to(self.device)
        store, _ = capture(model, self.features)

        @torch.no_grad()
        def apply(xb: torch.Tensor) -> torch.Tensor:
            out = model(xb.to(self.device))
            parts = [out] + [store[n].flatten(1) for n in self.features]
            return torch.cat(parts, dim=1).float().cpu()

        return apply


def _feature_shapes(
    model: ModelArtifact, features: list[str], x: torch.Tensor, trusted: tuple[str, ...] = ()
) -> dict[str, list[int]]:
    """Per-row shapes of the requested features (one row through the model on the CPU)."""
    net = load_model(model, trusted)
    store, handles = capture(net, features)
    with torch.no_grad():
        net(x[:1])
    for h in handles:
        h.remove()
    return {n: list(store[n].shape[1:]) for n in features}


def run(model: ModelArtifact, data: Dataset, *, cfg: InferConfig, ctx: StepContext) -> Logits:
    """Teacher logits over ``x_train`` (+ ``x_transfer``) and the features named in ``cfg.features``."""
    parts = [data.x_train] + ([data.x_transfer] if data.x_transfer is not None else [])
    x = torch.cat(parts)
    parallel = cfg.replicas > 1
    device = ("cuda" if cfg.gpus_per_replica > 0 else "cpu") if parallel else ctx.device
    make_fn = TeacherBatchFn(model, cfg.features, device, ctx.trusted_targets)
    out = ctx.map_batches(
        make_fn,
        x,
        batch_size=cfg.batch_size,
        replicas=cfg.replicas,
        cpus_per_replica=cfg.cpus_per_replica,
        gpus_per_replica=cfg.gpus_per_replica,
        window=cfg.window,
        min_replicas=cfg.min_replicas,
    )
    shapes = _feature_shapes(model, cfg.features, x, ctx.trusted_targets) if cfg.features else {}
    sizes = [out.shape[1] - sum(math.prod(s) for s in shapes.values())] + [math.prod(s) for s in shapes.values()]
    logits, *feats = out.split(sizes, dim=1)
    n = len(data.x_train)
    ctx.log_metrics(
        {
            "rows": len(x),
            "parallel": float(parallel),
            "train_acc": float((logits[:n].argmax(1) == data.y_train).float().mean()),
        }
    )
    return Logits(
        train=logits[:n].contiguous(),
        transfer=logits[n:].contiguous() if len(parts) > 1 else None,
        features={k: f.reshape(-1, *shapes[k]).contiguous() for k, f in zip(shapes, feats)},
        teacher=model.name,
    )
