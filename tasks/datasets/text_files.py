"""The user's own labeled text, read from files with the Hugging Face ``datasets`` library.

One file (``path``) is split into train / validation / test, or separate files are given for
validation and test (``val_path``, ``test_path``); each missing one is carved out of ``path``
(``tasks.datasets.text_splits``). A ``DatasetDict`` folder as ``path`` gives its ``train`` split,
and its ``validation`` / ``test`` splits when no separate file is named. This module checks the
columns each file must have; opening the files is ``tasks.datasets.text_tables``, numbering the
labels ``tasks.datasets.text_labels``.

Every refusal is one ``DataFileError`` line naming the file (and the column, the row, the labels at
fault). Rows are numbered from 1 as the file lists them (a CSV header is not a row). ``max_rows``
keeps a seeded sample of large files.
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass
from typing import Any

from tasks.core.checks import at_least, fraction, one_of, require
from tasks.datasets.text_labels import FileRows, label_ids, raw_labels
from tasks.datasets.text_splits import (
    SPLITS,
    DataFileError,
    TextSplit,
    TextSplits,
    carve,
    count_duplicates,
    drop_train_duplicates,
)
from tasks.datasets.text_tables import FORMATS, open_tables, pick_table


@dataclass
class TextFilesConfig:
    path: str  # the training file (or the one file to split), or a save_to_disk folder
    val_path: str = ""  # "" = carve validation out of path (val_fraction)
    test_path: str = ""  # "" = carve test out of path (test_fraction)
    format: str = "auto"  # auto (from the extension) | csv | json | jsonl | parquet | disk
    text_column: str = "text"
    text_pair_column: str = ""  # "" = single texts; else the second text of a sentence pair
    label_column: str = "label"  # "" = unlabeled text (embedding models, distillation pools)
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    drop_duplicates: bool = False  # drop validation / test rows whose text also occurs in train
    max_rows: int = 0  # per file, a seeded sample of at most this many rows; 0 = all

    def __post_init__(self) -> None:
        require("path", bool(self.path), "a data file or save_to_disk folder is required")
        one_of("format", self.format, FORMATS)
        require("text_column", bool(self.text_column), "must name the column holding the texts")
        require("text_pair_column", self.text_pair_column != self.text_column, "must differ from text_column")
        require(
            "label_column",
            not self.label_column or self.label_column not in (self.text_column, self.text_pair_column),
            "must differ from text_column and text_pair_column",
        )
        for key in ("val_path", "test_path"):
            require(key, getattr(self, key) != self.path, "must differ from path (the same rows would train and test)")
        require("test_path", not self.test_path or self.test_path != self.val_path, "must differ from val_path")
        fraction("val_fraction", self.val_fraction, open_low=True, open_high=True)
        fraction("test_fraction", self.test_fraction, open_low=True, open_high=True)
        require(
            "test_fraction",
            self.val_fraction + self.test_fraction < 1,
            f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} leaves no training rows",
        )
        at_least("max_rows", self.max_rows, 0)


def read_text_files(cfg: TextFilesConfig, id2label: dict[int, str] | None = None) -> TextSplits:
    """The train / validation / test texts (and pairs, label ids) of ``cfg``'s files, checked.

    ``id2label``: the model's labels; the files' labels must be among them (by name or id)."""
    parts = _read_sources(cfg)
    labels, label_names = label_ids(parts, id2label, cfg.label_column) if cfg.label_column else ({}, [])
    data = {name: TextSplit(r.split.texts, r.split.pairs, labels.get(name)) for name, r in parts.items()}
    sources = {name: r.source for name, r in parts.items()}
    carved = [name for name in ("val", "test") if name not in parts]
    if carved:
        fractions = {name: getattr(cfg, f"{name}_fraction") for name in carved}
        data.update(carve(data["train"], fractions, cfg.seed, sources["train"]))
        sources.update({name: sources["train"] for name in carved})
    duplicates = count_duplicates(data)  # counted before any dropping
    removed = 0
    if cfg.drop_duplicates:
        data, removed = drop_train_duplicates(data, sources)
    return TextSplits(
        train=data["train"],
        val=data["val"],
        test=data["test"],
        label_names=label_names,
        sources={name: sources[name] for name in SPLITS},
        duplicates=duplicates,
        removed_duplicates=removed,
    )


def _read_sources(cfg: TextFilesConfig) -> dict[str, FileRows]:
    """The rows of each split a file gives: train always, val / test when a file (or a split of
    the ``path`` DatasetDict folder) holds them."""
    tables: dict[str, tuple[str, Any]] = {}
    main = open_tables("path", cfg.path, cfg.format)
    tables["train"] = pick_table(main, "train", cfg.path, required=True)
    for name in ("val", "test"):
        file = getattr(cfg, f"{name}_path")
        if file:
            tables[name] = pick_table(open_tables(f"{name}_path", file, cfg.format), name, file, required=True)
        elif len(main) > 1 and (found := pick_table(main, name, cfg.path, required=False)):
            tables[name] = found
    return {name: _rows(ds, source, cfg) for name, (source, ds) in tables.items()}


# --- checking one file's rows -------------------------------------------------------------------


def _column(ds: Any, source: str, key: str, column: str) -> None:
    if column not in ds.column_names:
        close = difflib.get_close_matches(column, ds.column_names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise DataFileError(
            f"{source}: no column '{column}' ({key}); its columns: {', '.join(ds.column_names[:20])}{hint}"
        )


def _rows(ds: Any, source: str, cfg: TextFilesConfig) -> FileRows:
    import datasets

    columns = [("text_column", cfg.text_column), ("text_pair_column", cfg.text_pair_column)]
    columns += [("label_column", cfg.label_column)]
    for key, column in columns:
        if column:
            _column(ds, source, key, column)
    if ds.num_rows == 0:
        raise DataFileError(f"{source}: no data rows")
    rows = list(range(ds.num_rows))
    if cfg.max_rows and ds.num_rows > cfg.max_rows:
        rows = sorted(random.Random(cfg.seed).sample(rows, cfg.max_rows))
        ds = ds.select(rows)
    values = ds.select_columns([c for _, c in columns if c]).to_dict()
    texts = _texts(values[cfg.text_column], rows, source, cfg.text_column)
    pairs = _texts(values[cfg.text_pair_column], rows, source, cfg.text_pair_column) if cfg.text_pair_column else None
    raw, class_names = None, None
    if cfg.label_column:
        feature = ds.features[cfg.label_column]
        class_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        raw = raw_labels(values[cfg.label_column], rows, source, cfg.label_column, class_names)
    return FileRows(source, TextSplit(texts, pairs), raw, class_names)


def _texts(values: list[Any], rows: list[int], source: str, column: str) -> list[str]:
    bad = [(r, v) for r, v in zip(rows, values) if not isinstance(v, str) or not v.strip()]
    if bad:
        r, v = bad[0]
        what = "empty" if v is None or isinstance(v, str) else f"{v!r} ({type(v).__name__}), not a string"
        more = f" ({len(bad) - 1} more such row(s))" if len(bad) > 1 else ""
        raise DataFileError(f"{source}: row {r + 1}: column '{column}' is {what}{more}")
    return values
