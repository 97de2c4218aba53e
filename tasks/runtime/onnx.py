"""ONNX helpers shared by export, quantize, prune and benchmark: torch -> ONNX bytes, ORT sessions
and batched inference (timing: ``tasks.runtime.timing``).

``onnx`` and ``onnxruntime`` are imported inside the functions that use them, never at import:
the step table (``import tasks``) stays free of them.

Exporter choice (measured on torch 2.13 CPU for CNN1D / MLP / ResCNN2D): both exporters give
logits within 1e-7 of torch and a symbolic batch dimension. The TorchScript exporter
(``dynamo=False``) takes ~0.04 s but is deprecated; the ``torch.export`` exporter
(``dynamo=True``, the default since 2.9) takes ~0.6-0.9 s per model (~2-3 s for the first
call in a process) and folds BatchNorm into Conv just the same. We use ``dynamo=True`` (the
supported path) and fall back to the TorchScript exporter only when ``torch.export`` cannot
trace a model, so an exotic ``_target_`` model still exports.

Multi-input models (a transformer's ``input_ids``, ``attention_mask``, ``token_type_ids``) export
to ONE ONNX file with one graph input per name and a dynamic batch axis (and a dynamic sequence
axis, dim 1) on every input. Data for them arrives stacked (``Dataset.input_names``: ``x`` is
``[N, k, ...]``); ``ort_feed`` unstacks a batch into the graph's named inputs in each input's
own dtype (int64 token ids stay int64), and every measurement here (predict, accuracy, timing)
goes through it, so all inputs are always fed.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from tasks.core.types import Dataset

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger("slimray")

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EMBEDDING_OUTPUT = "sentence_embedding"  # "embedding" clashes with node names in BERT graphs
OPSET = 20
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def output_name(task: str) -> str:
    """The graph output's name for a task kind (``logits`` or ``sentence_embedding``)."""
    return EMBEDDING_OUTPUT if task == "embedding" else OUTPUT_NAME


def _example_batch(example: Tensor) -> Tensor:
    """Two samples of ``example`` so that the traced batch dimension is not specialized to 1.

    Floating inputs are cast to float32; integer inputs (token ids) keep their dtype.
    """
    example = example.detach().cpu()
    example = example if not example.is_floating_point() else example.float()
    return example[:2] if len(example) >= 2 else torch.cat([example, example])


def _args(x: Tensor, input_names: list[str]) -> tuple[Tensor, ...]:
    """The model's positional inputs: ``x`` itself, or its ``len(input_names)`` stacked slices."""
    if not input_names:
        return (x,)
    if x.dim() < 2 or x.shape[1] != len(input_names):
        raise ValueError(
            f"inputs {input_names}: expected x stacked as [N, {len(input_names)}, ...], got {list(x.shape)}"
        )
    return tuple(t.contiguous() for t in x.unbind(1))


def _dynamic_axes(args: tuple[Tensor, ...]) -> list[dict[int, str]]:
    """Batch (dim 0) everywhere; for several inputs also the sequence axis (dim 1) they share."""
    return [{0: "batch", 1: "sequence"} if len(args) > 1 and a.dim() > 1 else {0: "batch"} for a in args]


def _export_dynamo(model: nn.Module, args: tuple[Tensor, ...], names: list[str], output: str) -> bytes:
    dims = {"batch": torch.export.Dim("batch"), "sequence": torch.export.Dim("sequence")}
    shapes = tuple({axis: dims[label] for axis, label in spec.items()} for spec in _dynamic_axes(args))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export internals emit FutureWarnings
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            external_data=False,
            opset_version=OPSET,
            input_names=names,
            output_names=[output],
            dynamic_shapes=shapes,
            verbose=False,
        )
    if program is None:  # only when an output file is given, which we never do
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    return program.model_proto.SerializeToString()


def _export_torchscript(model: nn.Module, args: tuple[Tensor, ...], names: list[str], output: str) -> bytes:
    buf = io.BytesIO()
    axes: dict[str, dict[int, str]] = dict(zip(names, _dynamic_axes(args)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            args,
            buf,  # type: ignore[arg-type]  # a file-like object is accepted (the TorchScript exporter)
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=[output],
            dynamic_axes={**axes, output: {0: "batch"}},
        )
    return buf.getvalue()


def to_onnx(
    model: nn.Module,
    example: Tensor,
    dynamo: bool = True,
    input_names: list[str] | None = None,
    output: str = OUTPUT_NAME,
) -> bytes:
    """Export ``model`` (eval mode, CPU) to one self-contained ONNX file with a dynamic batch axis.

    ``example`` is any input batch (only its per-sample shape matters). Without ``input_names``
    the graph has one input ``input``; with them, ``example`` is stacked ``[N, k, ...]`` and the
    graph has the ``k`` named inputs, each with dynamic batch and sequence axes. One output
    (``output``, default ``logits``); the result passes ``onnx.checker.check_model``.
    """
    model = model.cpu().eval()
    names = list(input_names or [])
    args = _args(_example_batch(example), names)
    names = names or [INPUT_NAME]
    data = None
    if dynamo:
        try:
            data = _export_dynamo(model, args, names, output)
        except Exception as e:  # noqa: BLE001 - any tracing failure -> try the other exporter
            log.warning(
                "torch.export-based ONNX export failed (%s: %s); using the TorchScript exporter",
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
            )
    if data is None:
        data = _export_torchscript(model, args, names, output)
    import onnx

    onnx.checker.check_model(onnx.load_from_string(data))
    return data


def providers_for(device: str) -> list[str]:
    """ORT execution providers for a step device: CUDA (with CPU fallback) when asked and present."""
    import onnxruntime as ort

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
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    available = set(ort.get_available_providers())
    chosen = [p for p in (providers or []) if p in available and p != "CPUExecutionProvider"]
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=chosen + ["CPUExecutionProvider"])


def as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def ort_feed(session: ort.InferenceSession, x: Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """The ``session.run`` feed for a batch ``x``: one input gets ``x``; ``k`` inputs get the
    ``k`` slices of a stacked ``[B, k, ...]`` batch, in graph-input order; each in its own dtype."""
    arr = as_numpy(x)
    inputs = session.get_inputs()
    if len(inputs) == 1:
        parts = [arr]
    elif arr.ndim >= 2 and arr.shape[1] == len(inputs):
        parts = [arr[:, i] for i in range(len(inputs))]
    else:
        names = [i.name for i in inputs]
        raise ValueError(f"ONNX model has inputs {names}: expected a batch stacked as [B, {len(names)}, ...]")
    return {i.name: np.ascontiguousarray(p, dtype=_ORT_DTYPES.get(i.type, np.float32)) for i, p in zip(inputs, parts)}


def ort_predict(session: ort.InferenceSession, x: Tensor | np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Outputs (logits or embeddings) of the ONNX model over ``x``, computed in batches of ``batch_size``."""
    arr = as_numpy(x)
    outs = [session.run(None, ort_feed(session, arr[i : i + batch_size]))[0] for i in range(0, len(arr), batch_size)]
    return np.concatenate(outs) if outs else np.empty((0,), dtype=np.float32)


def ort_accuracy(session: ort.InferenceSession, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of an ORT session on ``(x, y)``."""
    if len(x) == 0:
        return float("nan")
    pred = ort_predict(session, x, batch_size).argmax(1)
    return float((pred == y.cpu().numpy()).mean())


def data_onnx(model: nn.Module, data: Dataset, dynamo: bool = True) -> bytes:
    """``to_onnx`` with the inputs and output of ``data``'s model: its ``input_names`` and task kind."""
    example = next((x for x in (data.x_val, data.x_test, data.x_train) if len(x)), data.x_train)
    return to_onnx(model, example[:2], dynamo, input_names=data.input_names, output=output_name(data.task))
