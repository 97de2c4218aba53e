"""A user's Hugging Face model folder (what ``save_pretrained`` writes), checked offline before any
weights load, so a folder that cannot be used fails in one line naming the file and the fix.

``inspect_folder`` runs nothing from the folder: it reads ``config.json``, the tokenizer, the
weight file names (``model.safetensors`` or sharded safetensors; a pickle-only folder only through
``torch.load(weights_only=True)``) and a sentence-transformers pooling config, and says what the
model is (classification or embedding, labels, input names, max length, pooling). Loading and
wrapping the model is ``tasks.models.hf_load``, its ONNX export ``tasks.models.hf_export``.
``transformers`` is imported lazily (the ``[nlp]`` extra), like ``tasks.models.transformer``.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tasks.models.transformer import _hf

SUPPORTED_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
POOLING_MODES = ("cls", "mean", "max")

# sentence-transformers modules that change nothing beyond pooling + optional L2 normalization
_ST_MODULES = ("Transformer", "Pooling", "Normalize")
# legacy sentence-transformers pooling flags -> mode (the order sentence-transformers concatenates them)
_ST_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# model types whose position ids start after the padding index (usable length = positions - pad - 1)
_PAD_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text")
_SENTENCEPIECE = ("spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "spm.model")
_HEAD_KEYS = ("classifier.", "score.")


class ModelFolderError(ValueError):
    """A model folder that cannot be used as it is: the one-line message names the file and the fix."""


@dataclass
class FolderInfo:
    """What a model folder holds, read offline (``inspect_folder``).

    ``task`` is ``classification`` (a sequence-classification head, ``id2label`` kept) or
    ``embedding`` (``id2label`` None, ``num_labels`` 0). ``input_names`` are the tokenizer's
    ``model_input_names`` in the order input_ids, attention_mask, token_type_ids: the stacking order
    of the data and the ONNX inputs (the mask second, as ``tasks.training.embedding`` reads it).
    ``pooling`` is the mode an embedding is pooled with (``cls`` / ``mean`` / ``max``) and
    ``pooling_source`` where it came from (the sentence-transformers config, or the default).
    """

    path: str
    model_type: str
    architectures: list[str]
    task: str
    id2label: dict[int, str] | None
    num_labels: int
    input_names: list[str]
    max_length: int
    pooling: str = "mean"
    pooling_source: str = "default"
    normalize: bool = False  # sentence-transformers Normalize module: L2-normalized embeddings
    weights: list[str] = field(default_factory=list)  # the weight files that are loaded

    @property
    def pooling_note(self) -> str:
        """``sentence-transformers config cls`` when the folder says so, else ``mean``."""
        return f"sentence-transformers config {self.pooling}" if self.pooling_source != "default" else self.pooling


def first_line(e: BaseException) -> str:
    """``Type: the message's first line``: an error from a library, fit for a one-line refusal."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _read_json(path: Path, folder: Path, kind: type = dict) -> Any:
    """The JSON file at ``path``, which must hold a ``kind`` (an object, or a list for ``modules.json``)."""
    try:
        body = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{folder}: {path.name} is not readable JSON ({first_line(e)})") from None
    if not isinstance(body, kind):
        raise ModelFolderError(f"{folder}: {path.name} holds a {type(body).__name__}, not a JSON {kind.__name__}")
    return body


def _weights(folder: Path) -> tuple[list[str], bool]:
    """(weight files, safetensors?): safetensors (single or sharded) first, a pickle checkpoint only if
    transformers loads it with ``torch.load(weights_only=True)``."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        safe = single.endswith(".safetensors")
        if (folder / single).is_file():
            files = [single]
        elif (folder / index_name).is_file():
            weight_map = _read_json(folder / index_name, folder).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelFolderError(f"{folder}: {index_name} has no weight_map")
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (folder / f).is_file()]
            if missing:
                raise ModelFolderError(f"{folder}: {index_name} names {missing[0]}, which is not in the folder")
        else:
            continue
        if not safe and not _pickle_loads_weights_only():
            raise ModelFolderError(
                f"{folder}: only {files[0]} (a pickle), and this transformers cannot promise to load it with "
                "torch.load(weights_only=True); convert the folder to safetensors (save_pretrained writes them)"
            )
        return files, safe
    raise ModelFolderError(
        f"{folder}: no weights (model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin)"
    )


def _pickle_loads_weights_only() -> bool:
    """transformers >= 4.45 takes ``weights_only`` (default True) and passes it to ``torch.load``,
    which needs torch >= 2.6 for it to be a safe restriction (CVE-2025-32434)."""
    hf = _hf()
    params = inspect.signature(hf.PreTrainedModel.from_pretrained).parameters
    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    return "weights_only" in params and (major, minor) >= (2, 6)


def _tokenizer_files(folder: Path) -> None:
    names = {p.name for p in folder.iterdir()}
    if "tokenizer.json" in names or "vocab.txt" in names or names & set(_SENTENCEPIECE):
        return
    if "vocab.json" in names and "merges.txt" not in names:
        raise ModelFolderError(f"{folder}: vocab.json without merges.txt: the BPE tokenizer is incomplete")
    if "vocab.json" in names:
        return
    raise ModelFolderError(
        f"{folder}: no tokenizer (tokenizer.json, vocab.txt, vocab.json + merges.txt, or a sentencepiece "
        f"{' / '.join(_SENTENCEPIECE)}); save the tokenizer into the folder too (tokenizer.save_pretrained)"
    )


def _load_tokenizer(folder: Path):
    try:
        return _hf().AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as e:
        raise ModelFolderError(f"{folder}: the tokenizer does not load ({first_line(e)})") from None


def _pooling(folder: Path) -> tuple[str, str, bool]:
    """(mode, source, normalize) from sentence-transformers' ``modules.json`` / ``1_Pooling/config.json``."""
    pooling_dir: Path | None = folder / "1_Pooling"
    normalize = False
    if (folder / "modules.json").is_file():
        modules = _read_json(folder / "modules.json", folder, list)
        pooling_dir = None
        for m in modules:
            what = str(m.get("type", "")) if isinstance(m, dict) else repr(m)
            kind = what.rsplit(".", 1)[-1]
            if kind not in _ST_MODULES:  # Dense, LayerNorm, Router...: the embedding is not the pooled output
                raise ModelFolderError(
                    f"{folder}: modules.json has {what}; "
                    f"only sentence-transformers {', '.join(_ST_MODULES)} modules are supported"
                )
            if kind == "Transformer" and m.get("path", ""):
                raise ModelFolderError(
                    f"{folder}: modules.json keeps the transformer in {m['path']}/; give that folder instead"
                )
            if kind == "Pooling":
                pooling_dir = folder / str(m.get("path", "1_Pooling"))
                if not pooling_dir.resolve().is_relative_to(folder.resolve()):
                    raise ModelFolderError(f"{folder}: modules.json puts Pooling outside the folder ({m.get('path')})")
            normalize = normalize or kind == "Normalize"
    if pooling_dir is None or not (pooling_dir / "config.json").is_file():
        return "mean", "default", normalize
    cfg = _read_json(pooling_dir / "config.json", folder)
    if "pooling_mode" in cfg:
        modes = cfg["pooling_mode"] if isinstance(cfg["pooling_mode"], list) else [cfg["pooling_mode"]]
    else:
        modes = [mode for flag, mode in _ST_FLAGS.items() if cfg.get(flag)] or ["mean"]
    where = f"{pooling_dir.name}/config.json"
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ModelFolderError(
            f"{folder}: {where} pools with {' + '.join(map(str, modes))}; supported: one of {', '.join(POOLING_MODES)}"
        )
    return modes[0], f"sentence-transformers {where}", normalize


def _has_head(folder: Path, files: list[str], safe: bool) -> bool:
    """A sequence-classification head among the weight names (safetensors headers only; a pickle is not opened)."""
    if not safe:
        return False
    if files == ["model.safetensors"]:
        from safetensors import safe_open

        with safe_open(str(folder / files[0]), framework="pt") as f:
            keys = list(f.keys())
    else:
        keys = list(_read_json(folder / "model.safetensors.index.json", folder)["weight_map"])
    return any(k.startswith(h) or f".{h}" in k for k in keys for h in _HEAD_KEYS)


def position_limit(config) -> int:
    """The longest sequence the model's position embeddings cover."""
    limit = int(getattr(config, "max_position_embeddings", 0) or 512)
    if config.model_type in _PAD_OFFSET_POSITIONS:
        limit -= int(config.pad_token_id or 0) + 1
    return limit


def _max_length(folder: Path, config, tok) -> int:
    limit = position_limit(config)
    st = folder / "sentence_bert_config.json"
    st_max = _read_json(st, folder).get("max_seq_length") if st.is_file() else None
    if isinstance(st_max, int) and st_max > 0:  # what sentence-transformers truncates to
        return min(limit, st_max)
    tok_max = int(getattr(tok, "model_max_length", 0) or 0)
    return min(limit, tok_max) if 0 < tok_max < 1_000_000 else limit


def _is_default_labels(id2label: dict) -> bool:
    return all(str(v) == f"LABEL_{k}" for k, v in id2label.items())


def inspect_folder(path: str | Path) -> FolderInfo:
    """What the folder at ``path`` is, checked offline; a ``ModelFolderError`` (one line) if it cannot be used."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such folder")
    if not (folder / "config.json").is_file():
        raise ModelFolderError(f"{folder}: not a Hugging Face model folder (no config.json)")
    raw = _read_json(folder / "config.json", folder)
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelFolderError(f"{folder}: config.json has no model_type")
    hf = _hf()
    try:
        config = hf.AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as e:
        raise ModelFolderError(
            f"{folder}: model_type '{model_type}' does not load with transformers {hf.__version__} "
            f"(custom model code is never run) ({first_line(e)})"
        ) from None
    _tokenizer_files(folder)
    files, safe = _weights(folder)
    tok = _load_tokenizer(folder)
    names = list(tok.model_input_names)
    unknown = [n for n in names if n not in SUPPORTED_INPUTS]
    if unknown or "input_ids" not in names or "attention_mask" not in names:
        raise ModelFolderError(
            f"{folder}: the tokenizer's model_input_names {names}: need input_ids and attention_mask, "
            f"and only {', '.join(SUPPORTED_INPUTS)}"
        )
    # stacked rows keep one order whatever the tokenizer lists (BERT's lists token_type_ids second):
    # attention_mask is always row 1, where padding trimming and length sorting read it
    names = [n for n in SUPPORTED_INPUTS if n in names]
    pooling, source, normalize = _pooling(folder)
    architectures = list(raw.get("architectures") or [])
    id2label = {int(k): str(v) for k, v in config.id2label.items()}
    head = any(a.endswith("ForSequenceClassification") for a in architectures) or (
        not _is_default_labels(id2label) and _has_head(folder, files, safe)
    )
    return FolderInfo(
        path=str(folder),
        model_type=model_type,
        architectures=architectures,
        task="classification" if head else "embedding",
        id2label=id2label if head else None,
        num_labels=len(id2label) if head else 0,
        input_names=names,
        max_length=_max_length(folder, config, tok),
        pooling=pooling,
        pooling_source=source,
        normalize=normalize,
        weights=files,
    )
