"""The ``inference`` task and its pure pieces: a ``Predictor`` (a model loaded once, called on a
batch, torch or ONNX Runtime) and ``plan_stages`` (a model cut into ``K`` pipeline stages).

The task runs a model over a data set with ``replicas`` data-parallel copies of each of
``stages`` pipeline stages (hybrid when both are > 1) through ``ctx.parallel_predict``: the engine
runs one stage on a Ray Data actor pool, ``K >= 2`` stages on chains of actors (``pipelines.scale.
pool``, faster there), a plain context in-process. It logs throughput, per-batch latency, per-actor
utilisation and the bubble fraction. With ``input_path`` feature files stream through the same
stages on Ray Data (``ctx.map_files``) into safetensors shards (``tasks.datasets.feature_shards``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.core.checks import at_least, one_of, require
from tasks.core.context import StepContext
from tasks.core.partition import balanced_cuts
from tasks.core.types import Dataset, ModelArtifact, Report
from tasks.datasets.feature_files import FORMATS
from tasks.datasets.feature_shards import write_shards
from tasks.models.build import load_model, sample_shape
from tasks.runtime.onnx import ort_session, providers_for, to_onnx


class Backend(str, Enum):
    torch = "torch"
    onnxruntime = "onnxruntime"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"  # cuda when the actor was given a GPU, else cpu


SPLITS = ("train", "val", "test", "all")  # `split`: which inputs of the data set ("all": the three)


@dataclass
class InferenceConfig:
    replicas: int = 2  # data-parallel copies (each a chain of `stages` actors)
    stages: int = 1  # pipeline (model-parallel) stages per replica
    split_points: list[str] = field(default_factory=list)  # module names starting stages 2..K; [] = balance by time
    micro_batch: int = 256  # rows per (micro-)batch
    window: int = 0  # blocks in flight per actor (0: Ray Data's default)
    min_replicas: int = 0  # > 0: a Ray Data pool grows from this many actors to `replicas` on demand
    backend: Backend = Backend.torch
    device: Device = Device.auto
    threads: int = 1  # intra-op threads per actor (CPU)
    cpus_per_actor: float = 0.0  # Ray CPUs reserved per actor (0: `threads`); 0.5 packs 4 actors on 2 cores
    gpus_per_actor: float = 0.0  # fractional GPUs per actor when GPUs exist (e.g. 0.5: 2 replicas on 1 GPU)
    rows: int = 0  # > 0: repeat the inputs up to this many rows (a large generated load)
    split: str = "test"  # which inputs of the data set: train | val | test | all
    input_path: str = ""  # feature files instead of the data set (split, rows unused): file, glob or folder
    input_format: str = "auto"  # auto (by extension) | parquet | csv | json
    input_columns: list[str] | None = None  # feature columns (or one list column); null: every numeric one
    id_column: str = ""  # integer row ids kept with the predictions ("": the row's position)

    def __post_init__(self) -> None:
        for key in ("replicas", "stages", "micro_batch", "threads"):
            at_least(key, getattr(self, key), 1)
        for key in ("window", "cpus_per_actor", "gpus_per_actor", "rows"):
            at_least(key, getattr(self, key), 0)
        one_of("split", self.split, SPLITS)
        require("min_replicas", 0 <= self.min_replicas <= self.replicas, "must be between 0 and replicas")
        require(
            "backend",
            self.stages == 1 or self.backend == Backend.torch,
            "pipeline stages need backend=torch (ONNX graphs are not split)",
        )
        one_of("input_format", self.input_format, FORMATS)
        for key in ("input_format", "input_columns", "id_column"):
            require(key, getattr(self, key) in ("auto", None, "") or bool(self.input_path), "needs input_path")


def resolve_device(device: str) -> str:
    """``auto`` is cuda when this process sees a GPU, else cpu; ``cuda`` without one is an error."""
    device = getattr(device, "value", device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no CUDA device is visible to this process")
    return device


def module_chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model as an ordered chain of (name, module) whose composition is its forward.

    Works for ``nn.Sequential`` (nested Sequentials are flattened) and for models whose only
    child is one (``MLP.net``). Other models have no known chain: a one-line error says so.
    """
    root, prefix = model, ""
    children = list(model.named_children())
    if not isinstance(model, nn.Sequential) and len(children) == 1 and isinstance(children[0][1], nn.Sequential):
        prefix, root = f"{children[0][0]}.", children[0][1]
    if not isinstance(root, nn.Sequential):
        raise ValueError(
            f"stages: {type(model).__name__} is not a chain of modules (use an nn.Sequential "
            f"model such as tasks.models.zoo.MLP to split it into stages)"
        )
    chain: list[tuple[str, nn.Module]] = []
    for name, mod in root.named_children():
        if isinstance(mod, nn.Sequential):
            chain += [(f"{prefix}{name}.{n}", m) for n, m in module_chain(mod)]
        else:
            chain.append((f"{prefix}{name}", mod))
    return chain


@torch.no_grad()
def module_times(chain: list[tuple[str, nn.Module]], x: torch.Tensor, repeats: int = 3) -> list[float]:
    """Measured seconds per module of the chain on batch ``x`` (best of ``repeats``)."""
    times = []
    for _, mod in chain:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            y = mod(x)
            best = min(best, time.perf_counter() - t)
        times.append(best)
        x = y
    return times


def plan_stages(
    model: nn.Module, k: int, sample: torch.Tensor, split_points: Sequence[str] = ()
) -> list[tuple[int, int]]:
    """``k`` contiguous module ranges ``[(start, end), ...]`` of the model's chain: cut at the named
    ``split_points`` when given, else balanced by measured per-module time on ``sample``."""
    chain = module_chain(model)
    names = [n for n, _ in chain]
    if split_points:
        unknown = [p for p in split_points if p not in names]
        if unknown or len(split_points) != k - 1:
            raise ValueError(f"split_points: need {k - 1} of {names}, got {list(split_points)}")
        cuts = sorted(names.index(p) for p in split_points)
    else:
        cuts = balanced_cuts(module_times(chain, sample), k)
    bounds = [0] + cuts + [len(chain)]
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def stage_module(model: nn.Module, span: tuple[int, int]) -> nn.Sequential:
    """The modules ``span`` of the model's chain as one ``nn.Sequential`` (shares the weights)."""
    return nn.Sequential(*[m for _, m in module_chain(model)[span[0] : span[1]]]).eval()


class Predictor:
    """A model loaded once and called on batches: ``Predictor(art, ...)(x) -> logits`` (CPU float).

    ``backend`` torch or onnxruntime (ORT uses ``art.onnx`` when present, e.g. INT8 models, else
    exports the model); ``device`` cpu | cuda | auto; ``threads`` intra-op threads; ``span`` keeps
    only those modules of the chain (one pipeline stage, torch only). On CUDA each predictor runs
    on its own stream, so stages in one process never serialise on the default stream.
    """

    def __init__(
        self,
        art: ModelArtifact,
        backend: str = "torch",
        device: str = "auto",
        threads: int = 1,
        span: tuple[int, int] | None = None,
        trusted: tuple[str, ...] = (),
    ):
        self.backend, self.device = getattr(backend, "value", backend), resolve_device(device)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
        if self.backend == "onnxruntime":
            if span is not None:
                raise ValueError("backend: onnxruntime cannot run a pipeline stage (use backend=torch with stages > 1)")
            onnx = art.onnx
            if onnx is None:
                onnx = to_onnx(load_model(art, trusted), torch.zeros(2, *sample_shape(art.arch)))
            self.session = ort_session(onnx, threads, providers=providers_for(self.device))
            self.input_name = self.session.get_inputs()[0].name
            return
        if self.backend != "torch":
            raise ValueError(f"backend: expected torch or onnxruntime, got '{self.backend}'")
        model = load_model(art, trusted)
        self.model = (stage_module(model, span) if span is not None else model).to(self.device)
        self.stream = torch.cuda.Stream(device=self.device) if self.device == "cuda" else None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "onnxruntime":
            arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
            return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])
        if self.stream is None:
            return self.model(x).float()
        with torch.cuda.stream(self.stream):
            out = self.model(x.pin_memory().to(self.device, non_blocking=True)).float().to("cpu", non_blocking=True)
        self.stream.synchronize()
        return out


def _inputs(data: Dataset, cfg: InferenceConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen split's inputs and labels, repeated up to ``cfg.rows`` rows when asked."""
    splits = {
        "train": [(data.x_train, data.y_train)],
        "val": [(data.x_val, data.y_val)],
        "test": [(data.x_test, data.y_test)],
    }
    splits["all"] = splits["train"] + splits["val"] + splits["test"]
    if cfg.split not in splits:
        raise ValueError(f"inference.split: expected one of {sorted(splits)}, got '{cfg.split}'")
    x = torch.cat([p[0] for p in splits[cfg.split]]).float()
    y = torch.cat([p[1] for p in splits[cfg.split]])
    if cfg.rows > 0:
        reps = -(-cfg.rows // len(x))
        x, y = x.repeat(reps, *[1] * (x.dim() - 1))[: cfg.rows], y.repeat(reps)[: cfg.rows]
    return x.contiguous(), y


def stage_factories(model: ModelArtifact, cfg: InferenceConfig, sample: torch.Tensor, trusted: tuple[str, ...] = ()):
    """Picklable factories, one per pipeline stage (``factory()`` loads that stage), and the spans."""
    backend = getattr(cfg.backend, "value", cfg.backend)
    device = getattr(cfg.device, "value", cfg.device)
    if cfg.stages == 1:
        return [functools.partial(Predictor, model, backend, device, cfg.threads, None, trusted)], []
    if backend != "torch":
        raise ValueError("inference.backend: pipeline stages need backend=torch (ONNX graphs are not split)")
    spans = plan_stages(load_model(model, trusted), cfg.stages, sample, cfg.split_points)
    return [functools.partial(Predictor, model, backend, device, cfg.threads, span, trusted) for span in spans], spans


def _engine(cfg: InferenceConfig) -> dict[str, Any]:
    """The actor-pool options of ``ctx.parallel_predict`` / ``ctx.map_files``."""
    pool = {"batch_size": cfg.micro_batch, "replicas": cfg.replicas, "window": cfg.window}
    cpus = cfg.cpus_per_actor or float(cfg.threads)
    return {**pool, "min_replicas": cfg.min_replicas, "cpus_per_actor": cpus, "gpus_per_actor": cfg.gpus_per_actor}


def _report(model: ModelArtifact, cfg: InferenceConfig, spans: list, summary: dict, **more) -> Report:
    info = {"model": model.name, "replicas": cfg.replicas, "stages": cfg.stages, "spans": [list(s) for s in spans]}
    backend = getattr(cfg.backend, "value", cfg.backend)
    return Report(data={**info, "micro_batch": cfg.micro_batch, "backend": backend, **summary, **more})


def run_files(model: ModelArtifact, cfg: InferenceConfig, ctx: StepContext) -> Report:
    """The rows of ``cfg.input_path`` through the stages, streamed into safetensors shards (files
    of the step's run, their index in the report): no array of all predictions is ever held."""
    sample = torch.zeros(cfg.micro_batch, *sample_shape(model.arch))  # only times modules (stages > 1)
    factories, spans = stage_factories(model, cfg, sample, ctx.trusted_targets)
    files: dict[str, Any] = {"format": cfg.input_format, "columns": cfg.input_columns, "id_column": cfg.id_column}
    blocks = ctx.map_files(factories, cfg.input_path, **files, **_engine(cfg))
    index = write_shards(blocks, ctx.log_file, features=blocks.columns, id_column=cfg.id_column)
    shards = {"prediction_rows": index["rows"], "prediction_shards": len(index["shards"])}
    summary = {**blocks.summary, **shards, "prediction_bytes": index["bytes"]}
    ctx.log_metrics(summary)
    return _report(model, cfg, spans, summary, predictions=index)


def run(model: ModelArtifact, data: Dataset, *, cfg: InferenceConfig, ctx: StepContext) -> Report:
    """``model`` over the data (or ``cfg.input_path``'s files) with ``replicas`` x ``stages``
    actors; throughput, latency, utilisation and bubble fraction as metrics (and the report's data)."""
    if cfg.input_path:
        return run_files(model, cfg, ctx)
    x, y = _inputs(data, cfg)
    factories, spans = stage_factories(model, cfg, x[: cfg.micro_batch], ctx.trusted_targets)
    out, summary = ctx.parallel_predict(factories, x, **_engine(cfg))
    if out.shape[0] != len(x):
        raise RuntimeError(f"inference: {out.shape[0]} outputs for {len(x)} rows")
    summary = {**summary, "accuracy": float((out.argmax(1) == y).float().mean())}
    ctx.log_metrics(summary)
    return _report(model, cfg, spans, summary)
