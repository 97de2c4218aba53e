"""A user's Hugging Face model folder loaded into torch and wrapped so the rest of the repo runs it
like any model.

- ``load_classifier`` / ``load_encoder`` load it with ``local_files_only=True`` and
  ``trust_remote_code=False`` in float32 eval mode, eager attention (exports to plain ONNX ops).
- ``Classifier`` / ``Embedder`` take ONE stacked tensor ``[B, len(input_names), T]`` (the
  ``Dataset.input_names`` convention of ``tasks.core.types``) or the separate tensors, in the
  folder's input order, so the repo batches them like any model.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.models.hf_folder import (
    POOLING_MODES,
    SUPPORTED_INPUTS,
    FolderInfo,
    ModelFolderError,
    _load_tokenizer,
    first_line,
    inspect_folder,
)
from tasks.models.transformer import _hf


def _from_pretrained(auto_cls, folder: Path, info: FolderInfo, **config_overrides):
    """``auto_cls.from_pretrained`` offline, float32, eager attention; safetensors only when present,
    else the pickle through ``torch.load(weights_only=True)``; refusals and failures in one line."""
    safe = info.weights[0].endswith(".safetensors")
    try:
        model, loading = auto_cls.from_pretrained(
            str(folder),
            **config_overrides,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=safe,
            weights_only=True,
            dtype=torch.float32,
            attn_implementation="eager",
            output_loading_info=True,
        )
    except pickle.UnpicklingError as e:  # torch's own advice (load with weights_only=False) is not repeated
        what = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), "not only tensors")
        raise ModelFolderError(
            f"{folder}: {info.weights[0]} was refused by torch.load(weights_only=True) ({what}); "
            "convert the folder to safetensors"
        ) from None
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelFolderError(f"{folder}: the model does not load ({first_line(e)})") from None
    return model.eval(), loading


def load_classifier(path: str | Path):
    """(model, tokenizer) of a sequence-classification folder, eval mode, its ``id2label`` kept."""
    folder = Path(path)
    info = inspect_folder(folder)
    if info.task != "classification":
        raise ModelFolderError(
            f"{folder}: no sequence-classification head (architectures {info.architectures}); load it as an encoder"
        )
    model, loading = _from_pretrained(_hf().AutoModelForSequenceClassification, folder, info)
    missing = sorted(loading["missing_keys"])
    if missing:
        raise ModelFolderError(
            f"{folder}: the weights lack {len(missing)} tensor(s) of the classifier, e.g. {missing[0]}"
        )
    return model, _load_tokenizer(folder)


def load_for_fine_tuning(path: str | Path, id2label: dict[int, str]):
    """An encoder folder (no classification head) as a sequence classifier for ``id2label``: the
    folder's encoder under a new head initialized as ``transformers`` does (the caller seeds it), eval
    mode. Only head tensors (outside the base model) and an unused pooler may be missing."""
    folder = Path(path)
    info = inspect_folder(folder)
    labels = {int(k): str(v) for k, v in id2label.items()}
    model, loading = _from_pretrained(
        _hf().AutoModelForSequenceClassification,
        folder,
        info,
        num_labels=len(labels),
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    prefix = f"{model.base_model_prefix}."
    missing = sorted(k for k in loading["missing_keys"] if k.startswith(prefix) and ".pooler." not in k)
    if missing:
        raise ModelFolderError(f"{folder}: the weights lack {len(missing)} tensor(s) of the encoder, e.g. {missing[0]}")
    return model.eval()


def load_encoder(path: str | Path):
    """(model, tokenizer, pooling) of the folder's encoder (``AutoModel``, eval mode) for embeddings;
    ``pooling`` is the folder's sentence-transformers mode or ``mean``."""
    folder = Path(path)
    info = inspect_folder(folder)
    model, loading = _from_pretrained(_hf().AutoModel, folder, info)
    missing = sorted(k for k in loading["missing_keys"] if not k.startswith("pooler."))  # pooler: unused here
    if missing:
        raise ModelFolderError(f"{folder}: the weights lack {len(missing)} tensor(s) of the encoder, e.g. {missing[0]}")
    return model, _load_tokenizer(folder), info.pooling


class Stacked(nn.Module):
    """Takes the inputs as one stacked ``[B, k, T]`` tensor or as ``k`` tensors, in ``input_names`` order."""

    task = "classification"

    def __init__(self, model: nn.Module, input_names: list[str]):
        super().__init__()
        if not 1 <= len(input_names) <= 3 or len(set(input_names)) != len(input_names):
            raise ValueError(f"input_names {input_names}: expected 1 to 3 distinct names of {list(SUPPORTED_INPUTS)}")
        self.model = model
        self.input_names = list(input_names)

    @property
    def config(self) -> Any:
        """The Hugging Face config of the wrapped model."""
        return self.model.config

    def _inputs(self, first: Tensor, second: Tensor | None, third: Tensor | None) -> dict[str, Tensor]:
        if second is None and first.dim() == 3:  # one stacked [B, k, T] tensor (the Dataset convention)
            if first.shape[1] != len(self.input_names):
                raise ValueError(
                    f"inputs {self.input_names}: expected [B, {len(self.input_names)}, T], got {list(first.shape)}"
                )
            parts = list(first.unbind(1))
        else:
            parts = [t for t in (first, second, third) if t is not None]
        return dict(zip(self.input_names, parts))


class Classifier(Stacked):
    """A sequence-classification model whose forward returns logits ``[B, num_labels]``."""

    def forward(self, inputs: Tensor, second: Tensor | None = None, third: Tensor | None = None) -> Tensor:
        return self.model(**self._inputs(inputs, second, third)).logits


class Embedder(Stacked):
    """An encoder + pooling (``cls``: first token; ``mean`` / ``max``: over the real tokens), optionally
    L2-normalized: the sentence-transformers Transformer -> Pooling -> (Normalize) recipe."""

    task = "embedding"

    def __init__(self, model: nn.Module, pooling: str, normalize: bool, input_names: list[str]):
        super().__init__(model, input_names)
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling '{pooling}' is not one of {list(POOLING_MODES)}")
        self.pooling, self.normalize = pooling, normalize

    def forward(self, inputs: Tensor, second: Tensor | None = None, third: Tensor | None = None) -> Tensor:
        feed = self._inputs(inputs, second, third)
        hidden = self.model(**feed).last_hidden_state
        mask = feed["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":  # the tokenizers of these encoders pad on the right: token 0 is [CLS]/<s>
            emb = hidden[:, 0]
        elif self.pooling == "max":
            emb = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        else:
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(emb, dim=-1) if self.normalize else emb
