"""The ``export`` step: turn a torch model artifact into a deployable ONNX file, gated on parity.

The ONNX outputs on the test split are compared with the torch model's (``tasks.evaluation.quality.parity``):
the largest absolute difference and the agreement - top-1 agreement for classification, the worst
row's cosine similarity for embeddings - are logged; if they miss ``cfg.atol`` /
``cfg.min_agreement`` the step fails with ``ValueError`` (a silently wrong deployable is worse than
none). Multi-input models (``Dataset.input_names``) export to one file with all their inputs.

Decisions:
* The output keeps the input's ``name``/``kind``/``parent``: export changes the format of a
  model, not the model, so benchmark/selection keep matching it by name.
* A model that already carries ONNX and is ``kind == "quantized"`` (an ORT INT8 model) is passed
  through unchanged: there is no torch twin to be bit-compatible with (its ``state_dict`` holds
  the FP32 weights it came from). Its agreement and max |diff| with those FP32 weights are
  logged for information (``fp32_agreement``, ``fp32_max_abs_diff``) but not gated: the
  quantize step already measured its accuracy.
* Any other model is (re-)exported from its ``state_dict``: the torch weights are the truth.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from tasks.core.checks import at_least, fraction
from tasks.core.context import StepContext
from tasks.core.options import TaskKind
from tasks.core.types import Dataset, ModelArtifact
from tasks.evaluation.quality import parity as kind_parity
from tasks.models.build import load_model
from tasks.runtime.onnx import data_onnx, ort_predict, ort_session
from tasks.training.loop import predict


@dataclass
class ExportConfig:
    atol: float = 1e-4  # max |torch - onnx| over all test logits
    min_agreement: float = 0.999  # min fraction of test samples with the same top-1 class
    batch_size: int = 1024
    threads: int = 1  # ORT intra-op threads for the parity run
    dynamo: bool = True  # torch.export-based exporter (False: deprecated TorchScript exporter)

    def __post_init__(self) -> None:
        at_least("atol", self.atol, 0)
        fraction("min_agreement", self.min_agreement)
        at_least("batch_size", self.batch_size, 1)
        at_least("threads", self.threads, 1)


def parity(torch_out: torch.Tensor, onnx_out: np.ndarray, task: str = TaskKind.classification) -> dict[str, float]:
    """``max_abs_diff`` and ``agreement`` (top-1 agreement; for embeddings the worst row's cosine)."""
    if tuple(torch_out.shape) != tuple(onnx_out.shape):
        raise ValueError(f"onnx output shape {onnx_out.shape} != torch output shape {tuple(torch_out.shape)}")
    if len(torch_out) == 0:
        raise ValueError("data.x_test is empty: nothing to check export parity on")
    stats = kind_parity(task, torch.from_numpy(np.asarray(onnx_out)), torch_out)
    agreement = stats["agreement"] if task == TaskKind.classification else stats["cos_min"]
    return {"max_abs_diff": stats["max_abs_diff"], "agreement": agreement}


def run(model: ModelArtifact, data: Dataset, *, cfg: ExportConfig, ctx: StepContext) -> ModelArtifact:
    """Export ``model`` to ONNX (one file, dynamic batch) and check it against torch on ``data.x_test``."""
    net = load_model(model, ctx.trusted_targets)
    ref = predict(net, data.x_test, cfg.batch_size)
    if model.onnx is not None and model.kind == "quantized":
        stats = parity(ref, ort_predict(ort_session(model.onnx, cfg.threads), data.x_test, cfg.batch_size), data.task)
        metrics = {
            "fp32_max_abs_diff": stats["max_abs_diff"],
            "fp32_agreement": stats["agreement"],
            "size_bytes": float(len(model.onnx)),
        }
        ctx.log_metrics(metrics)
        return dataclasses.replace(model, metrics={**model.metrics, **metrics})
    onnx_bytes = data_onnx(net, data, dynamo=cfg.dynamo)
    stats = parity(ref, ort_predict(ort_session(onnx_bytes, cfg.threads), data.x_test, cfg.batch_size), data.task)
    metrics = {**stats, "size_bytes": float(len(onnx_bytes))}
    ctx.log_metrics(metrics)
    if stats["max_abs_diff"] > cfg.atol:
        raise ValueError(
            f"export parity: max_abs_diff={stats['max_abs_diff']:.3g} > atol={cfg.atol} for '{model.name}'"
        )
    if stats["agreement"] < cfg.min_agreement:
        raise ValueError(
            f"export parity: agreement={stats['agreement']:.4f} < min_agreement={cfg.min_agreement} for '{model.name}'"
        )
    return dataclasses.replace(model, onnx=onnx_bytes, metrics={**model.metrics, **metrics})
