"""OpenVINO as a second CPU runtime for the benchmark (``benchmark.runtimes: [onnxruntime, openvino]``).

Each deployable candidate is exported to ONNX once (``exported``: torch-only candidates get their
ONNX here, before the ONNX Runtime rows are measured, so both runtimes run the same file).
OpenVINO reads that ONNX file directly (``openvino.Core.read_model``: its ONNX front end, no
conversion step) and compiles it for the CPU with ``INFERENCE_NUM_THREADS`` threads, FP32
inference precision (``INFERENCE_PRECISION_HINT``: OpenVINO would otherwise run BF16 on CPUs
that have it, and the quality figures must be those of the FP32 graph) and the latency hint.
ORT's own INT8 graphs are tried as they are: where OpenVINO's ONNX front end or CPU plugin cannot
take a graph (ORT contrib ops such as ``DynamicQuantizeMatMul`` or ``MatMulNBits`` it does not
implement), the candidate gets no OpenVINO row and the benchmark notes why.

Every OpenVINO row is named ``<candidate>@openvino`` with ``runtime`` ``openvino``; its quality
(accuracy, or the cosines to the reference) is measured on OpenVINO's own outputs, its parity
verdict is its candidate's, and selection picks among all rows - model x runtime.
``runtime_of``/``candidate_of`` map a row name back.

``openvino`` is imported inside the functions, never at import.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tasks.core.types import BenchmarkRow, Dataset, ModelArtifact
from tasks.runtime.timing import repeat_rows, time_batch

RUNTIMES = ("onnxruntime", "openvino")
SEP = "@"


def check_runtimes(runtimes: list[str]) -> None:
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes or runtimes[0] != "onnxruntime":
        raise ValueError(f"benchmark.runtimes: {list(runtimes)} (onnxruntime first, then any of {RUNTIMES[1:]})")


def candidate_of(row_name: str) -> str:
    """The candidate (artifact) name of a benchmark row: ``student@openvino`` -> ``student``."""
    return row_name.split(SEP, 1)[0]


def runtime_of(row: BenchmarkRow) -> str:
    """``onnxruntime``, ``openvino`` or ``torch`` (the reference row)."""
    return row.runtime.split()[0]


def version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


def compile_onnx(onnx_bytes: bytes, threads: int) -> Any:
    """An OpenVINO ``CompiledModel`` of the ONNX bytes on the CPU (FP32, ``threads`` threads)."""
    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(onnx_bytes)
        model = core.read_model(str(path))
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    return core.compile_model(model, "CPU", config)


def feed(compiled: Any, x: Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """The compiled model's inputs from one batch: ``x`` itself, or its stacked slices (token ids)."""
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    names = [i.get_any_name() for i in compiled.inputs]
    if len(names) == 1:
        return {names[0]: np.ascontiguousarray(arr, dtype=np.float32 if arr.dtype.kind == "f" else arr.dtype)}
    return {n: np.ascontiguousarray(arr[:, i]) for i, n in enumerate(names)}


def predictor(compiled: Any) -> Callable[[Tensor], Tensor]:
    """A batch -> outputs callable (the first output) on one infer request."""
    request = compiled.create_infer_request()

    def run(xb: Tensor) -> Tensor:
        return torch.from_numpy(np.array(request.infer(feed(compiled, xb))[compiled.outputs[0]]))

    return run


def predict(onnx_bytes: bytes, x: Tensor, batch_size: int) -> Tensor:
    run = predictor(compile_onnx(onnx_bytes, 1))
    return torch.cat([run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def timer(onnx_bytes: bytes, x: Tensor, warmup: int) -> Callable[[int, int, int], dict[str, float]]:
    """A ``tasks.runtime.measure`` timer on OpenVINO (one compiled model per thread count)."""
    compiled: dict[int, Any] = {}
    done: dict[tuple[int, int], dict[str, float]] = {}

    def time(n: int, batch: int, iters: int) -> dict[str, float]:
        if n not in compiled:
            compiled[n] = compile_onnx(onnx_bytes, n)
        if (n, batch) not in done:
            request = compiled[n].create_infer_request()
            inputs = feed(compiled[n], repeat_rows(x, max(1, batch)))
            done[n, batch] = time_batch(lambda: request.infer(inputs), batch, warmup, iters)
        return done[n, batch]

    return time


def exported(cands: list[ModelArtifact], data: Dataset, trusted: tuple[str, ...]) -> list[ModelArtifact]:
    """The candidates with their ONNX filled in (torch-only ones exported here, once)."""
    from tasks.models.build import load_model
    from tasks.runtime.onnx import data_onnx

    out = []
    for art in cands:
        simulated = bool(art.metrics.get("simulated"))
        if art.onnx is None and not simulated:
            art = dataclasses.replace(art, onnx=data_onnx(load_model(art, trusted), data))
        out.append(art)
    return out


def _quality(row: BenchmarkRow, onnx_bytes: bytes, data: Dataset, batch_size: int, ref: dict | None) -> dict | None:
    """Set the OpenVINO row's quality and its intervals from OpenVINO's own outputs (accuracy, or
    cosines to ``ref``); returns the per-row outcomes behind them (``tasks.evaluation.evidence``)."""
    from tasks.core.options import TaskKind
    from tasks.evaluation import evidence
    from tasks.runtime import measure
    from tasks.training.embedding import embed

    run = predictor(compile_onnx(onnx_bytes, 1))
    out = {"val": embed(run, data.x_val, batch_size), "test": embed(run, data.x_test, batch_size)}
    if data.task == TaskKind.classification:
        labels = evidence.labels_of(data)
        per_row = evidence.class_splits({s: out[s].numpy() for s in evidence.SPLITS}, labels)
        evidence.set_fields(row, evidence.classification_fields(per_row, labels))
        return per_row
    if ref is None:
        return None
    evidence.set_fields(row, measure.embedding_fields(out, ref))
    per_row = measure.cosine_splits(out, ref)
    evidence.set_fields(row, evidence.embedding_fields(per_row, row.top1_agree))
    return per_row


def openvino_rows(
    cands: list[ModelArtifact],
    measured: list[tuple[BenchmarkRow, Any]],
    data: Dataset,
    cfg: Any,
    ref: dict | None,
    evid: dict | None = None,
) -> tuple[list[tuple[BenchmarkRow, Any]], list[str]]:
    """``<candidate>@openvino`` rows (and their timers) for every timed ONNX Runtime row, and notes
    for the candidates OpenVINO cannot run; each row's per-row outcomes go into ``evid`` (what the
    paired comparisons read). ``cfg``: the benchmark's (``warmup``, ``eval_batch_size``)."""
    by_name = {a.name: a for a in cands}
    rows, notes = [], []
    tag = f"openvino {version()}"
    for row, make in measured:
        art = by_name.get(row.name)
        if make is None or art is None or art.onnx is None:
            continue
        ov_row = dataclasses.replace(row, name=f"{row.name}{SEP}openvino", runtime=tag, speed={})
        try:
            per_row = _quality(ov_row, art.onnx, data, cfg.eval_batch_size, ref)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own error types for unsupported ops
            notes.append(f"openvino cannot run '{row.name}': {str(e).splitlines()[0][:200]}")
            continue
        if evid is not None and per_row is not None:
            evid[ov_row.name] = per_row
        rows.append((ov_row, lambda b=art.onnx: timer(b, data.x_test, cfg.warmup)))
    return rows, notes


def with_runtimes(cands: list[ModelArtifact], data: Dataset, cfg: Any, trusted: tuple[str, ...]) -> list[ModelArtifact]:
    """The benchmark's candidates, exported once when a second runtime needs their ONNX too."""
    check_runtimes(list(cfg.runtimes))
    return exported(cands, data, trusted) if "openvino" in cfg.runtimes else cands


def runtime_rows(
    cands, measured, data: Dataset, cfg: Any, ref: dict | None, ctx: Any, evid: dict | None = None
) -> list:
    """The extra runtimes' rows for the benchmark (none unless ``cfg.runtimes`` holds openvino)."""
    if "openvino" not in cfg.runtimes:
        return []
    rows, notes = openvino_rows(cands, measured, data, cfg, ref, evid)
    for note in notes:
        ctx.note(note)
    return rows


class ServingSession:
    """An OpenVINO compiled model with the face of the ORT session ``tasks.serving.model`` serves
    (``run(None, feed)``, ``get_inputs()``, ``get_providers()``): a version registered for OpenVINO
    (model version tag ``slimray.runtime``) is served on OpenVINO, as the benchmark measured it."""

    _TYPES = {"f32": "tensor(float)", "i64": "tensor(int64)", "i32": "tensor(int32)"}

    def __init__(self, onnx_bytes: bytes, threads: int):
        self.compiled = compile_onnx(onnx_bytes, threads)

    def run(self, _outputs, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(self.compiled(feed)[self.compiled.outputs[0]])]

    def get_inputs(self) -> list:
        from types import SimpleNamespace

        return [
            SimpleNamespace(
                name=i.get_any_name(),
                type=self._TYPES.get(i.get_element_type().get_type_name(), "tensor(float)"),
                shape=[d.get_length() if d.is_static else None for d in i.get_partial_shape()],
            )
            for i in self.compiled.inputs
        ]

    def get_providers(self) -> list[str]:
        return [f"OpenVINO CPU {version()}"]
