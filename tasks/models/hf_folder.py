"""A user's Hugging Face model folder (what ``save_pretrained`` writes) as a teacher: checked, loaded
offline, wrapped for the repo's stacked inputs and exported to ONNX with the model's own input names.

- ``inspect_folder`` reads the folder without running anything from it: ``config.json``, the
  tokenizer, the weights (``model.safetensors`` or sharded safetensors; a pickle-only folder only
  through ``torch.load(weights_only=True)``), a sentence-transformers pooling config, and says what
  the model is (classification or embedding, labels, input names, max length, pooling).
- ``load_classifier`` / ``load_encoder`` load it with ``local_files_only=True`` and
  ``trust_remote_code=False`` in float32 eval mode, eager attention (exports to plain ONNX ops).
- ``Classifier`` / ``Embedder`` take ONE stacked tensor ``[B, len(input_names), T]`` (the
  ``Dataset.input_names`` convention of ``tasks.core.types``) or the separate tensors, in the
  folder's input order, so the rest of the repo batches them like any model.
- ``export_onnx`` writes one ONNX file with one graph input per tokenizer input (``input_ids``,
  ``attention_mask``, ``token_type_ids`` only when the tokenizer makes it), dynamic batch and
  sequence axes, and checks it against torch with ONNX Runtime before returning it.

``transformers`` is imported lazily (the ``[nlp]`` extra), like ``tasks.models.transformer``.
"""

from __future__ import annotations

import inspect
import json
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.models.transformer import _hf
from tasks.runtime.onnx import ort_feed, ort_session, output_name, to_onnx

SUPPORTED_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
POOLING_MODES = ("cls", "mean", "max")
TESTED_EXPORTS = ("bert", "distilbert", "roberta", "xlm-roberta", "deberta-v2", "mpnet")
"""Architectures whose export tests/test_hf_folder.py proves (torch vs ONNX Runtime)."""

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


class ExportUnsupported(ValueError):
    """An architecture that does not export to ONNX (or whose ONNX disagrees with torch)."""


@dataclass
class FolderInfo:
    """What a model folder holds, read offline (``inspect_folder``).

    ``task`` is ``classification`` (a sequence-classification head, ``id2label`` kept) or
    ``embedding`` (``id2label`` None, ``num_labels`` 0). ``input_names`` are the tokenizer's
    ``model_input_names`` in its order: the stacking order of the data and the ONNX inputs.
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _read_json(path: Path, folder: Path, kind: type = dict) -> Any:
    """The JSON file at ``path``, which must hold a ``kind`` (an object, or a list for ``modules.json``)."""
    try:
        body = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{folder}: {path.name} is not readable JSON ({_first_line(e)})") from None
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
        raise ModelFolderError(f"{folder}: the tokenizer does not load ({_first_line(e)})") from None


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
            f"(custom model code is never run) ({_first_line(e)})"
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


def _from_pretrained(auto_cls, folder: Path, info: FolderInfo):
    """``auto_cls.from_pretrained`` offline, float32, eager attention; safetensors only when present,
    else the pickle through ``torch.load(weights_only=True)``; refusals and failures in one line."""
    safe = info.weights[0].endswith(".safetensors")
    try:
        model, loading = auto_cls.from_pretrained(
            str(folder),
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
        raise ModelFolderError(f"{folder}: the model does not load ({_first_line(e)})") from None
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


class _Stacked(nn.Module):
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


class Classifier(_Stacked):
    """A sequence-classification model whose forward returns logits ``[B, num_labels]``."""

    def forward(self, inputs: Tensor, second: Tensor | None = None, third: Tensor | None = None) -> Tensor:
        return self.model(**self._inputs(inputs, second, third)).logits


class Embedder(_Stacked):
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


def check_rows(wrapper: _Stacked, batch: int, seq_len: int, seed: int = 0) -> Tensor:
    """``[batch, k, seq_len]`` stacked token rows for ``wrapper``: random ids, right padding with the
    model's pad id, random real lengths (the first row full), zero token types."""
    cfg = wrapper.config
    g = torch.Generator().manual_seed(seed)
    vocab = int(cfg.vocab_size)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq_len), generator=g)
    lengths = torch.randint(1, seq_len + 1, (batch,), generator=g)
    lengths[0] = seq_len
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    pad = int(getattr(cfg, "pad_token_id", 0) or 0)
    parts = {
        "input_ids": ids * mask + pad * (1 - mask),
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
    }
    return torch.stack([parts[n] for n in wrapper.input_names], dim=1)


def _restore_inputs(data: bytes, names: list[str]) -> bytes:
    """Give the graph every input in ``names`` order: the TorchScript exporter drops inputs the model
    ignores (DeBERTa-v3 reads no ``token_type_ids``), but a stacked batch feeds all of them."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load_from_string(data)
    have = {i.name: i for i in proto.graph.input}
    if [i.name for i in proto.graph.input] == names:
        return data
    ordered = [have.get(n) or helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in names]
    extra = [i for i in proto.graph.input if i.name not in names]  # never expected: keep them last
    del proto.graph.input[:]
    proto.graph.input.extend(ordered + extra)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(
    wrapper: _Stacked, input_names: list[str], seq_len: int, dynamo: bool = True, atol: float = 1e-4
) -> bytes:
    """ONNX of ``wrapper`` (``Classifier`` -> ``logits``, ``Embedder`` -> ``sentence_embedding``) with the
    model's own input names and dynamic batch and sequence axes, traced at ``seq_len``.

    Checked before it is returned: ONNX Runtime and torch agree within ``atol`` (relative to the
    outputs' scale) on a batch of 3 at ``seq_len`` and a padded batch of 5 at a shorter length.
    ``dynamo=False`` uses the TorchScript exporter only (fast, deprecated); with ``dynamo=True``
    ``tasks.runtime.onnx.to_onnx`` falls back to it when ``torch.export`` cannot trace the model.
    """
    if list(input_names) != wrapper.input_names:
        raise ValueError(f"input_names {list(input_names)} differ from the wrapper's {wrapper.input_names}")
    cfg = wrapper.config
    limit = position_limit(cfg)
    if not 2 <= seq_len <= limit:
        raise ValueError(f"seq_len {seq_len}: must be in [2, {limit}] (the model's positions)")
    wrapper = wrapper.cpu().eval()
    unsupported = f"{cfg.model_type}: does not export to ONNX; tested: {', '.join(TESTED_EXPORTS)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # tracer warnings about transformers' shape checks: the ORT check below decides
            data = to_onnx(
                wrapper, check_rows(wrapper, 2, seq_len), dynamo, list(input_names), output_name(wrapper.task)
            )
        data = _restore_inputs(data, list(input_names))
    except Exception as e:  # noqa: BLE001 - any exporter failure is this architecture's: say which
        raise ExportUnsupported(f"{unsupported} ({_first_line(e)})") from None
    session = ort_session(data, threads=1)
    for batch, length, seed in ((3, seq_len, 1), (5, max(1, seq_len // 2), 2)):
        rows = check_rows(wrapper, batch, length, seed)
        with torch.no_grad():
            ref = wrapper(rows).numpy()
        out = session.run(None, ort_feed(session, rows))[0]
        diff = float(np.abs(out - ref).max()) if out.shape == ref.shape else float("inf")
        if not diff <= atol * max(1.0, float(np.abs(ref).max())):
            raise ExportUnsupported(
                f"{unsupported} (ONNX Runtime differs from torch by {diff:.3g} at batch {batch}, length {length})"
            )
    return data
