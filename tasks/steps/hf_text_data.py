"""The ``hf_text_data`` step: the user's own text files (``tasks.datasets.text_files``) tokenized with the
user's own Hugging Face model folder (``tasks.models.hf_folder``) into a ``Dataset`` (needs the nlp extra).

- **Task**: ``classification`` when the files are labeled (``label_column``): a classifier folder's
  ``id2label`` numbers the labels (a label it does not know is the reader's one-line error), an
  encoder folder takes the files' own label names. Unlabeled files (``label_column=""``) give an
  ``embedding`` data set (``y = -1``, ``num_classes = 0``).
- **Inputs**: the folder's tokenizer (padding to ``seq_len``, truncation, text pairs when
  ``text_pair_column`` is set), stacked in the folder's ``input_names`` order: ``x_*`` is
  ``[N, len(input_names), seq_len]`` int64, the order the folder's ONNX graph takes.
- **Calibration**: ``n_calib`` seeded training rows are held out as ``x_calib`` (at most half of train).
- **Tracking**: split sizes, cross-split duplicates and the truncated fraction are metrics;
  ``text_files.json`` holds the texts' digest, sources and labels. The engine logs the returned
  ``Dataset`` as an MLflow dataset itself (``pipelines.store.lineage.record_output``: content
  digest of the stored output, source = the file this step's ``path`` names).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from tasks.core.checks import BadValue, at_least, require
from tasks.core.context import StepContext
from tasks.core.options import TaskKind
from tasks.core.types import Dataset
from tasks.datasets.text_files import TextFilesConfig, read_text_files
from tasks.datasets.text_splits import TextSplit
from tasks.models.hf_folder import _load_tokenizer, inspect_folder

DEFAULT_MAX_LEN = 128  # seq_len 0: the folder's max_length, capped here (CPU benchmarks)


@dataclass
class HfTextDataConfig(TextFilesConfig):
    """The reader's fields flat (``data.path=./train.csv data.text_column=review``) plus the model folder."""

    # required (checked when the step runs, so option files without data still compose)
    path: str = ""  # the training file (or the one file to split), or a save_to_disk folder
    model: str = ""  # the model folder: its tokenizer, and its id2label when it is a classifier
    seq_len: int = 0  # tokens per row (truncated / padded); 0 = the folder's max_length capped at 128
    n_calib: int = 256  # training rows held out for quantization calibration (at most half of train)

    def __post_init__(self) -> None:
        at_least("seq_len", self.seq_len, 0)
        at_least("n_calib", self.n_calib, 0)
        if self.path:
            super().__post_init__()

    def files(self) -> TextFilesConfig:
        """The reader's config, its checks run; ``path`` and ``model`` must be given by now."""
        require("model", bool(self.model), "a Hugging Face model folder is required (its tokenizer and labels)")
        require("path", bool(self.path), "a data file or save_to_disk folder is required")
        return TextFilesConfig(**{f.name: getattr(self, f.name) for f in fields(TextFilesConfig)})


def run(*, cfg: HfTextDataConfig, ctx: StepContext) -> Dataset:
    """Read, split, tokenize and stack the user's text files for the user's model folder."""
    files = cfg.files()
    info = inspect_folder(cfg.model)
    seq_len = cfg.seq_len or min(info.max_length, DEFAULT_MAX_LEN)
    if seq_len > info.max_length:
        raise BadValue("seq_len", f"{seq_len} is longer than {cfg.model} takes ({info.max_length} tokens)")
    text = read_text_files(files, info.id2label if files.label_column else None)
    train, calib = _hold_out(text.train, cfg.n_calib, files.seed)
    parts = {"train": train, "val": text.val, "test": text.test}
    if cfg.n_calib and len(calib) < cfg.n_calib:
        ctx.note(f"hf_text_data: {len(calib)} calibration rows, not n_calib {cfg.n_calib} (half of {len(text.train)})")

    tok = _load_tokenizer(Path(cfg.model))
    x = {name: encode(tok, split, info.input_names, seq_len) for name, split in parts.items()}
    labeled = bool(text.label_names)
    y = {name: _labels(split) for name, split in parts.items()}
    mask = x["train"][:, info.input_names.index("attention_mask")]
    counts = {f"{name}_rows": float(len(split)) for name, split in parts.items()}
    ctx.log_metrics(
        {
            **counts,
            "calib_rows": float(len(calib)),
            "classes": float(len(text.label_names)),
            **{f"duplicates_{k}": float(v) for k, v in text.duplicates.items()},
            "removed_duplicates": float(text.removed_duplicates),
            "truncated_fraction": float((mask.sum(1) >= seq_len).float().mean()) if len(mask) else 0.0,
        }
    )
    meta = {
        "digest": text.digest(),
        "sources": text.sources,
        "labels": text.label_names,
        "model": cfg.model,
        "input_names": info.input_names,
        "seq_len": seq_len,
    }
    ctx.log_file("text_files.json", json.dumps(meta, ensure_ascii=False, indent=1).encode())
    return Dataset(
        name=Path(cfg.path).name,
        x_train=x["train"],
        y_train=y["train"],
        x_val=x["val"],
        y_val=y["val"],
        x_test=x["test"],
        y_test=y["test"],
        num_classes=len(text.label_names),
        task=(TaskKind.classification if labeled else TaskKind.embedding).value,
        input_names=list(info.input_names),
        x_calib=encode(tok, calib, info.input_names, seq_len) if len(calib) else None,
        class_names=[str(n) for n in text.label_names],
    )


def _hold_out(train: TextSplit, n_calib: int, seed: int) -> tuple[TextSplit, TextSplit]:
    """(train without the calibration rows, the calibration rows): a seeded sample of at most half of train."""
    rows = list(range(len(train)))
    picked = set(random.Random(seed).sample(rows, min(n_calib, len(train) // 2)))
    return train.take([i for i in rows if i not in picked]), train.take(sorted(picked))


def _labels(split: TextSplit) -> Tensor:
    if split.labels is None:
        return torch.full((len(split),), -1, dtype=torch.long)
    return torch.tensor(split.labels, dtype=torch.long)


def encode(tok, split: TextSplit, input_names: list[str], seq_len: int) -> Tensor:
    """``[N, len(input_names), seq_len]`` int64: the tokenizer's outputs (pairs when the split has
    them) padded and truncated to ``seq_len``, stacked in ``input_names`` order."""
    if not len(split):
        return torch.zeros(0, len(input_names), seq_len, dtype=torch.long)
    enc = tok(
        split.texts,
        split.pairs,
        padding="max_length",
        truncation=True,
        max_length=seq_len,
        return_tensors="pt",
    )
    missing = [n for n in input_names if n not in enc]
    if missing:
        raise ValueError(f"the tokenizer gave {sorted(enc)}, not the model's inputs {missing}")
    return torch.stack([enc[n].long() for n in input_names], dim=1)
