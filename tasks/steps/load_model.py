"""The ``load_model`` task: bring an externally trained model (e.g. the user's teacher) into a
pipeline from its architecture plus a safetensors weights file — never a pickle.

The architecture is either an ``arch.json`` file (``arch_path``, as ``save_model`` writes it) or
a model config (``model``: ``_target_`` + kwargs + ``data_args``), completed with the data's
shape and class count like a model ``train`` builds. With the ``data`` input the loaded model's
val/test accuracy is measured, so selection rules can state the accuracy budget against it
(``val_acc >= teacher.val_acc - 0.01``): the start of a pipeline that compresses a model the user
already trained instead of training a teacher.

``save_model`` writes ``arch.json`` + ``model.safetensors`` from an artifact (a pruned model's
structure lives inside ``arch.json``), so a model made in one pipeline loads in another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from tasks.core.context import StepContext
from tasks.core.options import ModelKind
from tasks.core.types import Dataset, ModelArtifact
from tasks.models.build import build_model, complete_arch, count_params, make_artifact
from tasks.training.loop import accuracy

ARCH_FILE = "arch.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class LoadModelConfig:
    arch_path: str = ""  # JSON: {"_target_": "tasks.models.zoo.CNN1D", "input_shape": [...], ...}
    model: Any = None  # or a model config (_target_ + kwargs + data_args), completed with the data
    weights_path: str = ""  # safetensors state dict of that architecture
    kind: ModelKind = ModelKind.teacher


def save_model(art: ModelArtifact, directory: str | Path) -> Path:
    """Write ``arch.json`` and ``model.safetensors`` for ``art`` into ``directory``; return it."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / ARCH_FILE).write_text(json.dumps(art.arch, indent=2, sort_keys=True))
    save_file({k: v.contiguous() for k, v in art.state_dict.items()}, str(out / WEIGHTS_FILE))
    return out


def _read_arch(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"load_model.arch_path: file '{path}' does not exist")
    try:
        arch = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(arch, dict) or "_target_" not in arch:
        raise ValueError(f"{path}: architecture must be a JSON object with a '_target_' key")
    return arch


def _read_weights(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"load_model.weights_path: file '{path}' does not exist")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


def _check_state(model_state: dict, weights: dict, origin: Path) -> None:
    """One-line errors for missing/unexpected keys and shape mismatches (before load_state_dict)."""
    missing = sorted(set(model_state) - set(weights))
    extra = sorted(set(weights) - set(model_state))
    if missing or extra:
        raise ValueError(
            f"{origin}: weights do not match the architecture: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for k, v in model_state.items():
        if tuple(weights[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{origin}: '{k}' has shape {list(weights[k].shape)}, the architecture expects {list(v.shape)}"
            )


def _arch(cfg: LoadModelConfig, data: Dataset | None) -> dict:
    """The architecture from ``arch_path`` or from ``model`` (exactly one of them)."""
    if bool(cfg.arch_path) == (cfg.model is not None):
        raise ValueError("load_model: give exactly one of arch_path (an arch.json) and model (a model config)")
    if cfg.arch_path:
        return _read_arch(Path(cfg.arch_path))
    if not isinstance(cfg.model, dict) or "_target_" not in cfg.model:
        raise ValueError("load_model.model: must be a model config with a '_target_'")
    if data is None:
        if "data_args" in cfg.model:
            raise ValueError("load_model.model: has data_args but the step has no data input (inputs: {data: data})")
        return dict(cfg.model)
    return complete_arch(cfg.model, data.input_shape, data.num_classes)


def run(data: Dataset | None = None, *, cfg: LoadModelConfig, ctx: StepContext) -> ModelArtifact:
    """Build the architecture, check and load the weights, and return the model as an artifact
    (with its val/test accuracy when the data is given)."""
    arch = _arch(cfg, data)
    if not cfg.weights_path:
        raise ValueError("load_model.weights_path: missing (the model's .safetensors checkpoint)")
    weights = _read_weights(Path(cfg.weights_path))
    model = build_model(arch, ctx.trusted_targets)
    _check_state(model.state_dict(), weights, Path(cfg.weights_path))
    model.load_state_dict(weights, strict=True)
    model.eval()
    metrics = {"params": float(count_params(model))}
    if data is not None:
        metrics["val_acc"] = accuracy(model, data.x_val, data.y_val)
        metrics["test_acc"] = accuracy(model, data.x_test, data.y_test)
    ctx.log_metrics(metrics)
    return make_artifact(model, arch, name=ctx.step, kind=cfg.kind, metrics=metrics)
