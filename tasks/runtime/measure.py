"""How benchmark measures one candidate beyond accuracy: speed at several thread counts, the torch
FP32 reference row, agreement with a reference model's outputs, and the parity-gate verdict.

* Speed: ``speeds`` times a candidate at batch 1 (median latency) and at the throughput batch
  (samples/s at the median latency) for every thread count asked, with the one timer of
  ``tasks.runtime.timing`` (``time_ort`` for ONNX, ``time_torch`` for the reference row); keys
  are ``latency_ms_b1_t<n>`` and ``throughput_b<B>_t<n>``. All rows use the same padded rows of
  the evaluation split, so a fixed sequence length for token data. ``time_rows`` times every
  candidate in rounds that take all candidates in turn and keeps the median of each figure;
  ``row.timing`` gives each figure's median and spread (``spread_of``): the interquartile range
  over the rounds, or with one round over its timed runs (latency p50 and throughput).
* Reference row (``torch_row``): the teacher as it runs before slimray, torch FP32 eager; its
  size is that of its safetensors weights. Ratios of the selected model are stated against it.
* Quality of embedding models (``embedding_fields``): cosine / retrieval agreement of the
  candidate's ORT outputs with the reference's torch outputs on the evaluation split (reported)
  and the validation split (what selection reads).
* Per-row outcomes (``correct_splits``: right or wrong and the top-1 class id; ``cosine_splits``):
  what the quality figures' intervals and the paired comparisons of ``tasks.evaluation.evidence``
  are drawn from.
* ``rejection``: a candidate whose quantize step failed the parity gate (``metrics.rejected``)
  is rejected, with the figures it was rejected on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from tasks.core.context import StepContext
from tasks.core.types import BenchmarkRow, Dataset, ModelArtifact
from tasks.evaluation import evidence, stats
from tasks.evaluation.quality import embedding_quality
from tasks.runtime import hardware
from tasks.runtime.onnx import ort_predict, ort_session
from tasks.runtime.timing import time_ort, time_torch
from tasks.training.embedding import embed
from tasks.training.loop import predict

if TYPE_CHECKING:
    import onnxruntime as ort

Timer = Callable[[int, int, int], dict[str, Any]]  # (threads, batch, iters) -> time_batch's fields
NewTimer = Callable[[], Timer]  # makes a fresh timer (one per timing round)


def speeds(timer: Timer, threads: list[int], batch: int, iters_b1: int, iters_bn: int) -> dict[str, Any]:
    """``timer(threads, batch, iters) -> time_ort-style dict`` for every thread count, as flat keys
    (and ``<key>_iqr``: the spread of its timed runs, when the timer gives one)."""
    out: dict[str, Any] = {}
    for n in threads:
        b1, bn = timer(n, 1, iters_b1), timer(n, batch, iters_bn)
        out[f"latency_ms_b1_t{n}"] = b1["p50_ms"]
        out[f"throughput_b{batch}_t{n}"] = bn["throughput"]
        out[f"latency_ms_b1_t{n}_iqr"] = b1.get("p50_ms_iqr")
        out[f"throughput_b{batch}_t{n}_iqr"] = bn.get("throughput_iqr")
    return out


def ort_timer(onnx_bytes: bytes, x: Tensor, warmup: int) -> Timer:
    """A ``speeds`` timer for an ONNX model (one session per thread count)."""
    sessions: dict[int, ort.InferenceSession] = {}
    done: dict[tuple[int, int], dict[str, float]] = {}  # one timing per (threads, batch)

    def timer(n: int, batch: int, iters: int) -> dict[str, float]:
        sessions.setdefault(n, ort_session(onnx_bytes, n))
        if (n, batch) not in done:
            done[n, batch] = time_ort(sessions[n], x, batch, warmup, iters)
        return done[n, batch]

    return timer


def torch_timer(model: nn.Module, x: Tensor, warmup: int) -> Timer:
    done: dict[tuple[int, int], dict[str, float]] = {}

    def timer(n: int, batch: int, iters: int) -> dict[str, float]:
        if (n, batch) not in done:
            done[n, batch] = time_torch(model, x, batch, n, warmup, iters)
        return done[n, batch]

    return timer


def weights_bytes(model: nn.Module) -> int:
    """Bytes of the model's tensors as stored (the size of its safetensors weights, without header)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def reference_outputs(model: nn.Module, data: Dataset) -> dict[str, Tensor]:
    """The reference model's torch outputs on the validation and evaluation splits."""
    return {"val": embed(model, data.x_val), "test": embed(model, data.x_test)}


def ort_outputs(onnx_bytes: bytes, data: Dataset, batch_size: int) -> dict[str, Tensor]:
    """A candidate's ORT outputs on the validation and evaluation splits (1 thread)."""
    sess = ort_session(onnx_bytes, 1)
    run = lambda xb: torch.from_numpy(ort_predict(sess, xb, batch_size))  # noqa: E731
    return {"val": embed(run, data.x_val, batch_size), "test": embed(run, data.x_test, batch_size)}


def embedding_fields(out: dict[str, Tensor], ref: dict[str, Tensor]) -> dict[str, float]:
    """The ``BenchmarkRow`` embedding fields: eval-split agreement + the validation cosines."""
    test, val = embedding_quality(out["test"], ref["test"]), embedding_quality(out["val"], ref["val"])
    return {**test, "val_cos_mean": val["cos_mean"], "val_cos_min": val["cos_min"]}


def rejection(art: ModelArtifact) -> tuple[bool, str]:
    """(rejected, reason) from the candidate's parity-gate figures (``tasks.steps.quantize``)."""
    if not art.metrics.get("rejected"):
        return False, ""
    figures = ", ".join(
        f"{k.removeprefix('parity_')} {float(v):.4f}"
        for k, v in sorted(art.metrics.items())
        if k.startswith("parity_") and k != "parity_max_abs_diff"
    )
    return True, f"parity gate on held-out rows: {figures}"


class TimingPlan(Protocol):
    """What ``timed`` and ``time_rows`` read of the benchmark's config."""

    @property
    def threads(self) -> int: ...
    @property
    def iters_b1(self) -> int: ...
    @property
    def iters_b256(self) -> int: ...
    @property
    def throughput_batch(self) -> int: ...
    @property
    def speed_threads(self) -> list[int]: ...
    @property
    def rounds(self) -> int: ...


def timed(make_timer: NewTimer, plan: TimingPlan) -> dict[str, Any]:
    """One timing round of a candidate: batch-1 latency (p50, p95) and batch-N throughput at
    ``plan.threads``, and ``speed`` at each of ``speed_threads``, from a fresh timer."""
    timer = make_timer()
    b1 = timer(plan.threads, 1, plan.iters_b1)
    bn = timer(plan.threads, plan.throughput_batch, plan.iters_b256)
    return {
        "latency_ms_p50_b1": b1["p50_ms"],
        "latency_ms_p95_b1": b1["p95_ms"],
        "throughput_b256": bn["throughput"],
        "latency_ms_p50_b1_iqr": b1.get("p50_ms_iqr"),
        "throughput_b256_iqr": bn.get("throughput_iqr"),
        "speed": speeds(timer, plan.speed_threads, plan.throughput_batch, plan.iters_b1, plan.iters_b256),
    }


def spread_of(runs: list[dict], key: str) -> dict[str, Any] | None:
    """Median and spread of one timed figure over the rounds ``runs``: the IQR over the rounds when
    there are several, else the IQR of the one round's timed runs (``<key>_iqr``), else None."""
    if len(runs) > 1:
        return {**stats.spread([t[key] for t in runs]), "over": "rounds"}
    iqr = runs[0].get(f"{key}_iqr")
    return None if iqr is None else {"median": float(runs[0][key]), "iqr": list(iqr), "n": 1, "over": "runs"}


def time_rows(measured: list[tuple[BenchmarkRow, NewTimer | None]], plan: TimingPlan, ctx: StepContext) -> None:
    """Time every candidate in ``plan.rounds`` rounds, all candidates in turn in each round, and set
    each speed figure to its median over the rounds: a slow spell of a shared machine then hits
    one round of every candidate instead of every round of one. Rows without a timer (simulated
    models) are not timed. Every row names the node and the hardware (``tasks.runtime.hardware``)."""
    for row, _ in measured:  # where and on what these figures are measured
        row.node, row.hardware = hardware.node(), hardware.describe()
    timed_rows = [(row, make) for row, make in measured if make is not None]
    rounds: dict[str, list[dict]] = {row.name: [] for row, _ in timed_rows}
    for r in range(plan.rounds):
        for i, (row, make) in enumerate(timed_rows):
            what = f"timing {row.name} ({i + 1}/{len(timed_rows)})"
            ctx.progress(what if plan.rounds == 1 else f"{what}, round {r + 1}/{plan.rounds}")
            rounds[row.name].append(timed(make, plan))
    for row, _ in timed_rows:
        runs = rounds[row.name]
        for key in ("latency_ms_p50_b1", "latency_ms_p95_b1", "throughput_b256"):
            setattr(row, key, float(np.median([t[key] for t in runs])))
        keys = [k for k in runs[0]["speed"] if not k.endswith("_iqr")]
        row.speed = {k: float(np.median([t["speed"][k] for t in runs])) for k in keys}
        figures = {k: spread_of(runs, k) for k in ("latency_ms_p50_b1", "latency_ms_p95_b1", "throughput_b256")}
        figures |= {k: spread_of([t["speed"] for t in runs], k) for k in keys}
        row.timing = {k: v for k, v in figures.items() if v is not None}


def correct_splits(sess: ort.InferenceSession, data: Dataset, batch_size: int) -> dict[str, np.ndarray]:
    """Per row of the evaluation and validation splits: is the ORT model's top-1 the label, and
    its top-1 class id (``evidence.class_splits``)."""
    logits = {"test": ort_predict(sess, data.x_test, batch_size), "val": ort_predict(sess, data.x_val, batch_size)}
    return evidence.class_splits(logits, evidence.labels_of(data))


def torch_correct_splits(model: nn.Module, data: Dataset) -> dict[str, np.ndarray]:
    """``correct_splits`` of a torch model (the torch FP32 reference row)."""
    logits = {"test": predict(model, data.x_test).numpy(), "val": predict(model, data.x_val).numpy()}
    return evidence.class_splits(logits, evidence.labels_of(data))


def cosine_splits(out: dict[str, Tensor], ref: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """Per row of each split: cosine of the candidate's vector with the reference's."""
    return {s: evidence.cosine_rows(out[s], ref[s]) for s in ("test", "val")}
