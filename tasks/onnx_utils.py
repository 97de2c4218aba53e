"""ONNX helpers shared by export, quantize, prune and benchmark: torch -> ONNX bytes, ORT sessions,
batched inference and latency timing (the one definition of throughput: ``time_ort``).

Exporter choice (measured on torch 2.13 CPU for CNN1D / MLP / ResCNN2D): both exporters give
logits within 1e-7 of torch and a symbolic batch dimension. The TorchScript exporter
(``dynamo=False``) takes ~0.04 s but is deprecated; the ``torch.export`` exporter
(``dynamo=True``, the default since 2.9) takes ~0.6-0.9 s per model (~2-3 s for the first
call in a process) and folds BatchNorm into Conv just the same. We use ``dynamo=True`` (the
supported path) and fall back to the TorchScript exporter only when ``torch.export`` cannot
trace a model, so an exotic ``_target_`` model still exports.
"""

from __future__ import annotations

import io
import logging
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

log = logging.getLogger("slimray")

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 20


def _example_batch(example: Tensor) -> Tensor:
    """Two samples of ``example`` so that the traced batch dimension is not specialized to 1."""
    example = example.detach().float().cpu()
    return example[:2] if len(example) >= 2 else torch.cat([example, example])


def _export_dynamo(model: nn.Module, x: Tensor) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export internals emit FutureWarnings
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            external_data=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    if program is None:  # only when an output file is given, which we never do
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    return program.model_proto.SerializeToString()


def _export_torchscript(model: nn.Module, x: Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (x,),
            buf,  # type: ignore[arg-type]  # a file-like object is accepted (the TorchScript exporter)
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return buf.getvalue()


def to_onnx(model: nn.Module, example: Tensor, dynamo: bool = True) -> bytes:
    """Export ``model`` (eval mode, CPU) to one self-contained ONNX file with a dynamic batch axis.

    ``example`` is any input batch (only its per-sample shape matters). The graph has one input
    ``input`` and one output ``logits``; the result passes ``onnx.checker.check_model``.
    """
    model = model.cpu().eval()
    x = _example_batch(example)
    data = None
    if dynamo:
        try:
            data = _export_dynamo(model, x)
        except Exception as e:  # noqa: BLE001 - any tracing failure -> try the other exporter
            log.warning(
                "torch.export-based ONNX export failed (%s: %s); using the TorchScript exporter",
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
            )
    if data is None:
        data = _export_torchscript(model, x)
    onnx.checker.check_model(onnx.load_from_string(data))
    return data


def providers_for(device: str) -> list[str]:
    """ORT execution providers for a step device: CUDA (with CPU fallback) when asked and present."""
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def ort_session(onnx_bytes: bytes, threads: int, providers: list[str] | None = None) -> ort.InferenceSession:
    """An ORT session with fixed intra/inter-op thread counts (so timings are comparable).

    ``providers`` defaults to CPU; a requested provider that this ORT build lacks is dropped
    (e.g. CUDA on a CPU-only install), CPU is always kept as the fallback.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    available = set(ort.get_available_providers())
    chosen = [p for p in (providers or []) if p in available and p != "CPUExecutionProvider"]
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=chosen + ["CPUExecutionProvider"])


def _as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def ort_predict(session: ort.InferenceSession, x: Tensor | np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Logits of the ONNX model over ``x`` (float32), computed in batches of ``batch_size``."""
    arr = _as_numpy(x)
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: arr[i : i + batch_size]})[0] for i in range(0, len(arr), batch_size)]
    return np.concatenate(outs) if outs else np.empty((0,), dtype=np.float32)


def ort_accuracy(session: ort.InferenceSession, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of an ORT session on ``(x, y)``."""
    if len(x) == 0:
        return float("nan")
    pred = ort_predict(session, x, batch_size).argmax(1)
    return float((pred == y.cpu().numpy()).mean())


def time_ort(
    session: ort.InferenceSession, x: Tensor | np.ndarray, batch: int, warmup: int = 10, iters: int = 50
) -> dict[str, float]:
    """Latency of one ``session.run`` on a batch of ``batch`` samples taken from ``x``.

    Rows are repeated when ``x`` has fewer than ``batch``. Returns the median and 95th percentile
    latency in ms and the throughput (samples/s) at the median latency.
    """
    if batch < 1 or iters < 1:
        raise ValueError(f"batch and iters must be >= 1, got batch={batch} iters={iters}")
    arr = _as_numpy(x)
    reps = -(-batch // len(arr))
    xb = np.ascontiguousarray(np.concatenate([arr] * reps)[:batch])
    feed = {session.get_inputs()[0].name: xb}
    for _ in range(warmup):
        session.run(None, feed)
    times = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        session.run(None, feed)
        times[i] = time.perf_counter() - t0
    p50 = float(np.percentile(times, 50))
    return {"p50_ms": p50 * 1e3, "p95_ms": float(np.percentile(times, 95)) * 1e3, "throughput": batch / p50}


def deployed_speed(
    model: nn.Module, example: Tensor, batch: int, threads: int = 1, warmup: int = 5, iters: int = 20
) -> tuple[dict[str, float], bytes]:
    """``time_ort`` of ``model`` exported to ONNX: the speed of the model as it is deployed.

    ``prune`` selects its candidates on this, so the selection metric and the benchmark's
    ``throughput_b256`` are one measure on one runtime. The graph comes from the TorchScript
    exporter when it can trace the model: after ORT's graph optimizations it runs the same kernels
    as the ``torch.export`` graph the ``export`` step deploys (checked for CNN1D, MLP and ResCNN2D:
    identical fused Conv/Gemm nodes), and it is produced ~10x faster, which matters in a sweep.
    Returns the timing and the ONNX bytes (whose length is the size).
    """
    try:
        onnx_bytes = to_onnx(model, example, dynamo=False)
    except Exception:  # noqa: BLE001 - a model only torch.export can trace
        onnx_bytes = to_onnx(model, example)
    return time_ort(ort_session(onnx_bytes, threads), example, batch, warmup, iters), onnx_bytes
