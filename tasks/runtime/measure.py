"""How benchmark measures one candidate beyond accuracy: speed at several thread counts, the torch
FP32 reference row, agreement with a reference model's outputs, and the parity-gate verdict.

* Speed: ``speeds`` times a candidate at batch 1 (median latency) and at the throughput batch
  (samples/s at the median latency) for every thread count asked, with ``time_ort`` for ONNX
  and the same protocol in torch (``time_torch``) for the reference row; keys are
  ``latency_ms_b1_t<n>`` and ``throughput_b<B>_t<n>``. All rows use the same padded rows of the
  evaluation split, so a fixed sequence length for token data.
* Reference row (``torch_row``): the teacher as it runs before slimray, torch FP32 eager; its
  size is that of its safetensors weights. Ratios of the selected model are stated against it.
* Quality of embedding models (``embedding_fields``): cosine / retrieval agreement of the
  candidate's ORT outputs with the reference's torch outputs on the evaluation split (reported)
  and the validation split (what selection reads).
* ``rejection``: a candidate whose quantize step failed the parity gate (``metrics.rejected``)
  is rejected, with the figures it was rejected on.
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from tasks.core.types import Dataset, ModelArtifact
from tasks.evaluation.quality import embedding_quality
from tasks.runtime.onnx import ort_predict, ort_session, time_ort
from tasks.training.embedding import embed


def _batch(x: Tensor, batch: int) -> Tensor:
    reps = -(-batch // len(x))
    return torch.cat([x] * reps)[:batch]


@torch.no_grad()
def time_torch(model: nn.Module, x: Tensor, batch: int, threads: int, warmup: int, iters: int) -> dict[str, float]:
    """``time_ort``'s protocol for a torch model (eval, no grad, ``threads`` intra-op threads)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        xb = _batch(x, batch)
        model.eval()
        for _ in range(warmup):
            model(xb)
        times = np.empty(iters)
        for i in range(iters):
            t0 = time.perf_counter()
            model(xb)
            times[i] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous)
    p50 = float(np.percentile(times, 50))
    return {"p50_ms": p50 * 1e3, "p95_ms": float(np.percentile(times, 95)) * 1e3, "throughput": batch / p50}


def speeds(timer, threads: list[int], batch: int, iters_b1: int, iters_bn: int) -> dict[str, float]:
    """``timer(threads, batch, iters) -> time_ort-style dict`` for every thread count, as flat keys."""
    out: dict[str, float] = {}
    for n in threads:
        out[f"latency_ms_b1_t{n}"] = timer(n, 1, iters_b1)["p50_ms"]
        out[f"throughput_b{batch}_t{n}"] = timer(n, batch, iters_bn)["throughput"]
    return out


def ort_timer(onnx_bytes: bytes, x: Tensor, warmup: int):
    """A ``speeds`` timer for an ONNX model (one session per thread count)."""
    sessions: dict[int, ort.InferenceSession] = {}
    done: dict[tuple[int, int], dict[str, float]] = {}  # one timing per (threads, batch)

    def timer(n: int, batch: int, iters: int) -> dict[str, float]:
        sessions.setdefault(n, ort_session(onnx_bytes, n))
        if (n, batch) not in done:
            done[n, batch] = time_ort(sessions[n], x, batch, warmup, iters)
        return done[n, batch]

    return timer


def torch_timer(model: nn.Module, x: Tensor, warmup: int):
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
