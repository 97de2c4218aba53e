"""A user's Hugging Face sequence classifier (or embedding model) as a model the pipeline can store
and rebuild.

``HFSequenceClassifier`` is ``tasks.models.hf_load.Classifier`` (one stacked ``[B, k, T]`` tensor
or ``k`` tensors in the folder's input order -> logits) around a model that it builds itself from a
config dict, so its ``arch`` is plain JSON (``hf_classifier_arch``) and ``tasks.models.build``
rebuilds it from a ``ModelArtifact`` without the user's folder. The state dict keys are the
wrapper's (``model.<hf keys>``), the same as a ``Classifier`` around the loaded folder, so weights
move between the two unchanged. Built with eager attention in float32: it exports to plain ONNX ops.

``config['id2label']`` stays in the arch (JSON turns its keys into strings; ``transformers`` turns
them back), so reports and serving can name the labels. ``transformers`` is imported lazily.
"""

from __future__ import annotations

import json

import torch

from tasks.models.hf_load import Classifier, Embedder
from tasks.models.transformer import _hf

# config keys that describe where and how the folder was written, not the model (dropped from arch)
_PROVENANCE = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "auto_map", "_attn_implementation")


class HFSequenceClassifier(Classifier):
    """``AutoModelForSequenceClassification.from_config`` of ``config`` (random weights), wrapped as a
    ``Classifier`` taking ``input_names`` (stacked or separate) and returning logits."""

    def __init__(self, config: dict, input_names: list[str]):
        hf = _hf()
        cfg = hf.AutoConfig.for_model(**{k: v for k, v in config.items() if k not in _PROVENANCE})
        model = hf.AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
        super().__init__(model, list(input_names))


class HFEmbedder(Embedder):
    """``AutoModel.from_config`` of ``config`` (random weights) + the folder's pooling (and L2
    normalization), wrapped as an ``Embedder`` taking ``input_names``: a user's embedding model."""

    def __init__(self, config: dict, input_names: list[str], pooling: str = "mean", normalize: bool = False):
        hf = _hf()
        cfg = hf.AutoConfig.for_model(**{k: v for k, v in config.items() if k not in _PROVENANCE})
        model = hf.AutoModel.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
        super().__init__(model, pooling, normalize, list(input_names))


TARGET = f"{HFSequenceClassifier.__module__}.{HFSequenceClassifier.__qualname__}"
EMBEDDER_TARGET = f"{HFEmbedder.__module__}.{HFEmbedder.__qualname__}"
TRUSTED = (TARGET, EMBEDDER_TARGET)  # what a config's trusted_models lists for a user's folder


def hf_classifier_arch(config: dict, input_names: list[str]) -> dict:
    """The JSON ``arch`` of an ``HFSequenceClassifier``: what ``tasks.models.build.build_model`` rebuilds.

    ``config`` is a Hugging Face config as a dict (``model.config.to_dict()``), ``model_type`` included.
    """
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise ValueError(f"hf_classifier_arch: config has no model_type (keys {sorted(config)[:8]}...)")
    clean = json.loads(json.dumps({k: v for k, v in config.items() if k not in _PROVENANCE}))  # JSON values only
    return {"_target_": TARGET, "config": clean, "input_names": [str(n) for n in input_names]}


def hf_embedder_arch(config: dict, input_names: list[str], pooling: str, normalize: bool) -> dict:
    """The JSON ``arch`` of an ``HFEmbedder`` (see ``hf_classifier_arch``)."""
    arch = hf_classifier_arch(config, input_names)
    return {**arch, "_target_": EMBEDDER_TARGET, "pooling": pooling, "normalize": bool(normalize)}
