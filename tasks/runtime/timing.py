"""The one timer: latency and throughput of a model on a fixed batch, for torch and ONNX Runtime.

``time_batch(run, batch, warmup, iters)`` calls ``run()`` (one forward pass over a prepared batch
of ``batch`` samples) ``warmup`` times untimed, then ``iters`` times with ``time.perf_counter``,
and returns ``p50_ms`` and ``p95_ms`` (latency percentiles), ``throughput`` (samples/s at
the median latency) and the spread of the timed runs: ``p50_ms_iqr`` (latency p25, p75) and
``throughput_iqr`` (samples/s at the p75 and p25 latency). ``time_ort`` (an ORT session) and
``time_torch`` (a torch module, eval mode, no grad, a fixed intra-op thread count) only prepare
the batch and the callable, so a torch row and an ONNX row of the benchmark are measured by the same protocol.
``deployed_speed`` is the speed of a torch model as deployed: exported to ONNX, timed on ORT.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from tasks.runtime.onnx import as_numpy, ort_feed, ort_session, to_onnx

if TYPE_CHECKING:
    import onnxruntime as ort


def time_batch(run: Callable[[], object], batch: int, warmup: int = 10, iters: int = 50) -> dict[str, Any]:
    """Latency of ``run()`` (one pass over ``batch`` samples): ``p50_ms``, ``p95_ms`` and
    ``throughput`` (samples/s at the median latency)."""
    if batch < 1 or iters < 1:
        raise ValueError(f"batch and iters must be >= 1, got batch={batch} iters={iters}")
    for _ in range(warmup):
        run()
    times = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        run()
        times[i] = time.perf_counter() - t0
    p25, p50, p75, p95 = (float(q) for q in np.percentile(times, [25, 50, 75, 95]))
    return {
        "p50_ms": p50 * 1e3,
        "p95_ms": p95 * 1e3,
        "throughput": batch / p50,
        "p50_ms_iqr": [p25 * 1e3, p75 * 1e3],
        "throughput_iqr": [batch / p75, batch / p25],
    }


def repeat_rows(x: Tensor | np.ndarray, batch: int) -> Tensor | np.ndarray:
    """``batch`` rows: those of ``x`` repeated as often as needed (``x`` may have fewer rows)."""
    if len(x) == 0:
        raise ValueError("timing needs at least one row")
    reps = -(-batch // len(x))
    return (torch.cat([x] * reps) if isinstance(x, Tensor) else np.concatenate([x] * reps))[:batch]


def time_ort(
    session: ort.InferenceSession, x: Tensor | np.ndarray, batch: int, warmup: int = 10, iters: int = 50
) -> dict[str, Any]:
    """``time_batch`` of one ``session.run`` on a batch of ``batch`` rows of ``x`` (all graph inputs fed)."""
    feed = ort_feed(session, repeat_rows(as_numpy(x), max(1, batch)))
    return time_batch(lambda: session.run(None, feed), batch, warmup, iters)


def time_torch(
    model: nn.Module, x: Tensor, batch: int, threads: int = 1, warmup: int = 10, iters: int = 50
) -> dict[str, Any]:
    """``time_batch`` of one eval-mode, no-grad forward pass of ``model`` with ``threads`` intra-op threads."""
    xb = repeat_rows(x.detach(), max(1, batch))
    model.eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            return time_batch(lambda: model(xb), batch, warmup, iters)
    finally:
        torch.set_num_threads(previous)


def deployed_speed(
    model: nn.Module,
    example: Tensor,
    batch: int,
    threads: int = 1,
    warmup: int = 5,
    iters: int = 20,
    input_names: list[str] | None = None,
) -> tuple[dict[str, Any], bytes]:
    """``time_ort`` of ``model`` exported to ONNX: the speed of the model as it is deployed.

    ``prune`` selects its candidates on this, so the selection metric and the benchmark's
    ``throughput_b256`` are one measure on one runtime. The graph comes from the TorchScript
    exporter when it can trace the model: after ORT's graph optimizations it runs the same kernels
    as the ``torch.export`` graph the ``export`` step deploys (checked for CNN1D, MLP and ResCNN2D:
    identical fused Conv/Gemm nodes), and it is produced ~10x faster, which matters in a sweep.
    Returns the timing and the ONNX bytes (whose length is the size).
    """
    try:
        onnx_bytes = to_onnx(model, example, dynamo=False, input_names=input_names)
    except Exception:  # noqa: BLE001 - a model only torch.export can trace
        onnx_bytes = to_onnx(model, example, input_names=input_names)
    return time_ort(ort_session(onnx_bytes, threads), example, batch, warmup, iters), onnx_bytes
