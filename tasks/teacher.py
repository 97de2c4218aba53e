"""The ``load_model`` task: bring an externally trained model (e.g. the user's teacher) into a
pipeline from an architecture JSON file plus a safetensors weights file — never a pickle.

``save_model`` writes the same pair (``arch.json`` + ``model.safetensors``) from an artifact,
so a model trained in one pipeline can be exported and loaded by another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file

from tasks.context import StepContext
from tasks.models import build_model, count_params, make_artifact
from tasks.options import ModelKind
from tasks.types import ModelArtifact

ARCH_FILE = "arch.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class LoadModelConfig:
    arch_path: str = ""  # JSON: {"_target_": "tasks.models.CNN1D", "input_shape": [...], ...}
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


def run(*, cfg: LoadModelConfig, ctx: StepContext) -> ModelArtifact:
    """Build the architecture, check and load the weights, and return the model as an artifact."""
    arch = _read_arch(Path(cfg.arch_path))
    weights = _read_weights(Path(cfg.weights_path))
    model = build_model(arch, ctx.trusted_targets)
    _check_state(model.state_dict(), weights, Path(cfg.weights_path))
    model.load_state_dict(weights, strict=True)
    params = float(count_params(model))
    ctx.log_metrics({"params": params})
    return make_artifact(model.eval(), arch, name=ctx.step, kind=cfg.kind, metrics={"params": params})
