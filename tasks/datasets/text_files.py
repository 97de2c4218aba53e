"""The user's own labeled text, read from files with the Hugging Face ``datasets`` library.

One file (``path``) is split into train / validation / test, or separate files are given for
validation and test (``val_path``, ``test_path``); each missing one is carved out of ``path``.
Formats, from the extension unless ``format`` says: ``.csv``, ``.jsonl`` / ``.json``,
``.parquet``, or a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
(a ``DatasetDict`` folder as ``path`` gives its ``train`` split, and its ``validation`` /
``test`` splits when no separate file is named).

- **Split**: seeded and stratified by label (each class is spread over the splits in
  proportion; unlabeled text: a plain seeded split); the same seed gives the same splits.
  Split rows keep their file order.
- **Labels**: names or integer ids. With the model's ``id2label`` names are mapped through it and
  ids must be its ids; without it a ``ClassLabel`` column keeps its names and ids, other names
  are sorted (numbers in numeric order) and numbered, and integer ids must already be
  ``0..K-1``.
- **Duplicates**: texts (or text pairs) found in two splits are counted (before any dropping);
  ``drop_duplicates`` removes the validation / test rows whose text also occurs in train, so
  evaluation is not contaminated.
- **Errors**: every refusal is one ``DataFileError`` line naming the file (and the column, the
  row, the labels at fault). Rows are numbered from 1 as the file lists them (a CSV header is
  not a row).
- **Offline, and nothing in the user's home**: the packaged ``csv`` / ``json`` / ``parquet``
  builders read local files without contacting the Hub (the tests read with sockets refused),
  so ``HF_DATASETS_OFFLINE`` is not needed. Their Arrow cache goes to a temporary directory
  (``cache_dir``) removed after reading, with ``keep_in_memory=True``: the rows live in memory,
  not in ``~/.cache/huggingface``. ``max_rows`` keeps a seeded sample of large files.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.core.checks import BadValue, at_least, fraction, one_of, require

SPLITS = ("train", "val", "test")
FORMATS = ("auto", "csv", "json", "jsonl", "parquet", "disk")
_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# a DatasetDict folder's split names for each of our splits
_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid", "dev"), "test": ("test",)}
_SHOW = 5  # labels / columns named in one error line


class DataFileError(ValueError):
    """A data file that cannot be used as it is: one line naming the file and what is wrong."""


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


@dataclass
class TextSplit:
    texts: list[str]
    pairs: list[str] | None = None  # the second text of each pair (text_pair_column), else None
    labels: list[int] | None = None  # label ids (index into TextSplits.label_names), None if unlabeled

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: list[int]) -> TextSplit:
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return TextSplit([self.texts[i] for i in idx], pick(self.pairs), pick(self.labels))

    def keys(self) -> list[Any]:
        """What makes two rows duplicates: the text, or the (text, pair) pair."""
        return list(self.texts) if self.pairs is None else list(zip(self.texts, self.pairs))


@dataclass
class TextSplits:
    train: TextSplit
    val: TextSplit
    test: TextSplit
    label_names: list[str] = field(default_factory=list)  # id -> name; [] when unlabeled
    sources: dict[str, str] = field(default_factory=dict)  # split -> the file (or folder[split]) it came from
    duplicates: dict[str, int] = field(default_factory=dict)  # train_val / train_test / val_test: shared texts
    removed_duplicates: int = 0  # validation + test rows dropped by drop_duplicates

    def split(self, name: str) -> TextSplit:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def digest(self) -> str:
        """SHA-256 of the label names and every split's texts, pairs and labels (in order): the same
        content always gives the same digest, any change to a text or label a different one."""
        h = hashlib.sha256(json.dumps(self.label_names, ensure_ascii=False).encode())
        for name in SPLITS:
            s = self.split(name)
            pairs: list[str | None] = list(s.pairs) if s.pairs is not None else [None] * len(s)
            labels: list[int | None] = list(s.labels) if s.labels is not None else [None] * len(s)
            for row in zip(s.texts, pairs, labels):
                h.update(json.dumps([name, *row], ensure_ascii=False).encode() + b"\n")
        return h.hexdigest()


@dataclass
class _Rows:
    """One file's rows as read and checked, labels still as the file holds them."""

    source: str
    split: TextSplit
    raw_labels: list[str | int] | None
    class_names: list[str] | None  # a ClassLabel column's names (ids already turned into names)


def read_text_files(cfg: TextFilesConfig, id2label: dict[int, str] | None = None) -> TextSplits:
    """The train / validation / test texts (and pairs, label ids) of ``cfg``'s files, checked.

    ``id2label``: the model's labels; the files' labels must be among them (by name or id)."""
    parts = _read_sources(cfg)
    labels, label_names = _label_ids(parts, id2label, cfg) if cfg.label_column else ({}, [])
    data = {name: TextSplit(r.split.texts, r.split.pairs, labels.get(name)) for name, r in parts.items()}
    sources = {name: r.source for name, r in parts.items()}
    carve = [name for name in ("val", "test") if name not in parts]
    if carve:
        fractions = {name: getattr(cfg, f"{name}_fraction") for name in carve}
        data.update(_carve(data["train"], fractions, cfg.seed, sources["train"]))
        sources.update({name: sources["train"] for name in carve})
    keys = {name: set(data[name].keys()) for name in SPLITS}
    duplicates = {f"{a}_{b}": len(keys[a] & keys[b]) for a, b in (("train", "val"), ("train", "test"), ("val", "test"))}
    removed = 0
    if cfg.drop_duplicates:
        for name in ("val", "test"):
            keep = [i for i, k in enumerate(data[name].keys()) if k not in keys["train"]]
            removed += len(data[name]) - len(keep)
            if not keep:
                raise DataFileError(
                    f"{sources[name]}: every {name} row also occurs in train; nothing is left to evaluate "
                    f"with drop_duplicates"
                )
            data[name] = data[name].take(keep)
    return TextSplits(
        train=data["train"],
        val=data["val"],
        test=data["test"],
        label_names=label_names,
        sources={name: sources[name] for name in SPLITS},
        duplicates=duplicates,
        removed_duplicates=removed,
    )


# --- reading -----------------------------------------------------------------------------------


def _read_sources(cfg: TextFilesConfig) -> dict[str, _Rows]:
    """The rows of each split a file gives: train always, val / test when a file (or a split of
    the ``path`` DatasetDict folder) holds them."""
    tables: dict[str, tuple[str, Any]] = {}
    main = _open("path", cfg.path, cfg.format)
    tables["train"] = _pick(main, "train", cfg.path, required=True)
    for name in ("val", "test"):
        file = getattr(cfg, f"{name}_path")
        if file:
            tables[name] = _pick(_open(f"{name}_path", file, cfg.format), name, file, required=True)
        elif len(main) > 1 and (found := _pick(main, name, cfg.path, required=False)):
            tables[name] = found
    return {name: _rows(ds, source, cfg) for name, (source, ds) in tables.items()}


def _pick(tables: dict[str, Any], split: str, file: str, required: bool) -> Any:
    """``(source, Dataset)`` of ``split`` in what one file or folder holds (a one-table file: that table)."""
    if list(tables) == [""]:
        return file, tables[""]
    names = [n for n in _SPLIT_NAMES[split] if n in tables]
    if names:
        return f"{file}[{names[0]}]", tables[names[0]]
    if len(tables) == 1:
        (only,) = tables
        return f"{file}[{only}]", tables[only]
    if required:
        raise DataFileError(
            f"{file}: a DatasetDict folder with splits {sorted(tables)} and none named "
            f"{' / '.join(_SPLIT_NAMES[split])} for {split}"
        )
    return None


def _format(key: str, path: Path, fmt: str) -> str:
    if path.is_dir():
        if fmt not in ("auto", "disk"):
            raise DataFileError(f"{key}: '{path}' is a folder, but format is '{fmt}' (a file format)")
        return "disk"
    if fmt == "disk":
        raise DataFileError(f"{key}: '{path}' is a file, but format 'disk' reads a save_to_disk folder")
    if fmt != "auto":
        return "json" if fmt == "jsonl" else fmt
    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataFileError(
            f"{key}: '{path}': unknown format '{path.suffix or path.name}' (auto reads .csv, .jsonl, .json, "
            f".parquet or a save_to_disk folder); rename the file or set format"
        )
    return builder


@contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars while reading (restored after)."""
    import datasets

    was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()


def _open(key: str, file: str, fmt: str) -> dict[str, Any]:
    """The table(s) in ``file``: ``{"": Dataset}`` for a file or Dataset folder, ``{split: Dataset}``
    for a DatasetDict folder. Every read failure becomes one line naming the file."""
    import datasets  # the nlp extra: imported when a file is read, not with this module

    path = Path(file)
    if not path.exists():
        raise DataFileError(f"{key}: '{file}' does not exist")
    kind = _format(key, path, fmt)
    if kind == "disk":
        if not any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
            raise DataFileError(
                f"{file}: a folder not written by Dataset.save_to_disk / DatasetDict.save_to_disk "
                f"(no state.json or dataset_dict.json)"
            )
        try:
            loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
            tables = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"": loaded}
            for ds in tables.values():
                ds.data.table.validate(full=True)  # strings are valid UTF-8 (Arrow defers that check)
        except Exception as e:  # datasets / Arrow raise many types for a damaged folder
            raise _read_error(file, "a save_to_disk folder", e) from None
        return tables
    if path.stat().st_size == 0:
        raise DataFileError(f"{file}: the file is empty")
    if kind == "parquet" and _parquet_rows(path) == 0:
        raise DataFileError(f"{file}: no data rows")  # datasets' own error says "BatchSize must be greater than 0"
    try:
        with tempfile.TemporaryDirectory(prefix="slimray-datasets-") as cache, _quiet():
            ds = datasets.load_dataset(
                kind, data_files=str(path.resolve()), split="train", cache_dir=cache, keep_in_memory=True
            )
        ds.data.table.validate(full=True)  # the JSON reader leaves invalid UTF-8 to be found later
    except Exception as e:  # pandas, Arrow, json and datasets each raise their own types
        raise _read_error(file, kind, e) from None
    return {"": ds}


def _parquet_rows(path: Path) -> int | None:
    """The row count in a Parquet file's footer (None if unreadable: the reader then says why)."""
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path).num_rows
    except Exception:  # noqa: BLE001 - any damage is reported by the full read
        return None


def _read_error(file: str, kind: str, e: BaseException) -> DataFileError:
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    if any(isinstance(err, UnicodeDecodeError) or "Invalid UTF8" in str(err) for err in chain):
        where = _first_bad_line(file) if kind in ("csv", "json") else "a string holds bytes that UTF-8 cannot decode"
        return DataFileError(f"{file}: not UTF-8 text ({where}); save the file as UTF-8")
    if any("corresponds to no data" in str(err) for err in chain):
        return DataFileError(f"{file}: no data rows")
    root = chain[-1]
    detail = " ".join(f"{type(root).__name__}: {root}".split())
    return DataFileError(f"{file}: could not be read as {kind} ({detail[:300]})")


def _first_bad_line(file: str) -> str:
    """Where the first byte that UTF-8 cannot decode is (newlines are ASCII: lines decode alone)."""
    with open(file, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return f"line {n} holds byte 0x{line[e.start]:02x}"
    return "a byte UTF-8 cannot decode"


# --- checking one file's rows -------------------------------------------------------------------


def _column(ds: Any, source: str, key: str, column: str) -> None:
    if column not in ds.column_names:
        close = difflib.get_close_matches(column, ds.column_names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise DataFileError(
            f"{source}: no column '{column}' ({key}); its columns: {', '.join(ds.column_names[:20])}{hint}"
        )


def _rows(ds: Any, source: str, cfg: TextFilesConfig) -> _Rows:
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
        raw = _raw_labels(values[cfg.label_column], rows, source, cfg.label_column, class_names)
    return _Rows(source, TextSplit(texts, pairs), raw, class_names)


def _texts(values: list[Any], rows: list[int], source: str, column: str) -> list[str]:
    bad = [(r, v) for r, v in zip(rows, values) if not isinstance(v, str) or not v.strip()]
    if bad:
        r, v = bad[0]
        what = "empty" if v is None or isinstance(v, str) else f"{v!r} ({type(v).__name__}), not a string"
        more = f" ({len(bad) - 1} more such row(s))" if len(bad) > 1 else ""
        raise DataFileError(f"{source}: row {r + 1}: column '{column}' is {what}{more}")
    return values


def _raw_labels(
    values: list[Any], rows: list[int], source: str, column: str, class_names: list[str] | None
) -> list[str | int]:
    """The labels as names (str) or ids (int); missing values and other types are refused."""
    missing = [r for r, v in zip(rows, values) if v is None or (class_names is not None and v == -1)]
    if missing:
        raise DataFileError(
            f"{source}: column '{column}' has {len(missing)} missing label(s) (first at row {missing[0] + 1})"
        )
    if class_names is not None:
        return [class_names[v] for v in values]
    out: list[str | int] = []
    for r, v in zip(rows, values):
        if isinstance(v, bool):  # a CSV's True / False column: two names
            v = str(v)
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, (str, int)):
            raise DataFileError(
                f"{source}: row {r + 1}: label {v!r} ({type(v).__name__}) in column '{column}' is neither a "
                f"name nor an integer id"
            )
        out.append(v)
    if len({type(v) for v in out}) > 1:
        raise DataFileError(f"{source}: column '{column}' mixes label names and integer ids")
    return out


# --- labels ---------------------------------------------------------------------------------------


def _natural(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if re.fullmatch(r"\d+", name) else (1, name)


def _few(values: list[Any]) -> str:
    shown = ", ".join(repr(v) for v in values[:_SHOW])
    return f"[{shown}{f', ... {len(values) - _SHOW} more' if len(values) > _SHOW else ''}]"


def _label_ids(
    parts: dict[str, _Rows], id2label: dict[int, str] | None, cfg: TextFilesConfig
) -> tuple[dict[str, list[int]], list[str]]:
    """Each split's label ids and the label names (index = id)."""
    known_as = "the model's labels"
    if id2label is None:
        named = [r for r in parts.values() if r.class_names is not None]
        if named:
            first = named[0]
            for other in named[1:]:
                if other.class_names != first.class_names:
                    raise DataFileError(
                        f"{other.source}: ClassLabel names {_few(other.class_names or [])} differ from "
                        f"{first.source}'s {_few(first.class_names or [])}"
                    )
            id2label, known_as = dict(enumerate(first.class_names or [])), f"the class names of {first.source}"
    if id2label is not None:
        return _through(parts, id2label, known_as)
    kinds = {name: type(r.raw_labels[0]) for name, r in parts.items() if r.raw_labels}
    if len(set(kinds.values())) > 1:
        by = ", ".join(f"{parts[n].source} has {'names' if k is str else 'integer ids'}" for n, k in kinds.items())
        raise DataFileError(f"label column '{cfg.label_column}': files disagree ({by})")
    found = {v for r in parts.values() for v in r.raw_labels or []}
    if set(kinds.values()) == {int}:
        ints = sorted(int(v) for v in found)
        if ints != list(range(len(ints))):
            files = ", ".join(r.source for r in parts.values())
            raise DataFileError(
                f"{files}: integer labels {_few(ints)} are not the ids 0..K-1 of K classes{_gaps(ints)}; "
                f"give ids 0..K-1 or label names"
            )
        return {n: [int(v) for v in r.raw_labels or []] for n, r in parts.items()}, [str(i) for i in ints]
    names = sorted((str(v) for v in found), key=_natural)
    ids = {v: i for i, v in enumerate(names)}
    return {n: [ids[str(v)] for v in r.raw_labels or []] for n, r in parts.items()}, names


def _gaps(ints: list[int]) -> str:
    """The first ids missing below the largest (a stray huge id stops the search early)."""
    have, missing = set(ints), []
    for i in range(max(ints)):
        if i not in have:
            missing.append(i)
            if len(missing) > _SHOW:
                break
    return f" (missing {_few(missing)})" if missing else ""


def _through(
    parts: dict[str, _Rows], id2label: dict[int, str], known_as: str
) -> tuple[dict[str, list[int]], list[str]]:
    """Labels mapped through ``id2label`` (names by name, ids by id); unknown ones refused by file."""
    try:
        table = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise BadValue("id2label", f"keys must be integer ids, got {_few(list(id2label))}") from None
    if sorted(table) != list(range(len(table))):
        raise BadValue("id2label", f"ids {_few(sorted(table))} are not 0..K-1")
    by_name: dict[str, int] = {}
    for i in sorted(table):
        by_name.setdefault(table[i], i)
    out = {}
    for name, r in parts.items():
        raw = r.raw_labels or []
        ids = [by_name.get(v, -1) if isinstance(v, str) else (v if v in table else -1) for v in raw]
        unknown = sorted({v for v, i in zip(raw, ids) if i < 0}, key=lambda v: _natural(str(v)))
        if unknown:
            raise DataFileError(
                f"{r.source}: label(s) {_few(unknown)} not in {known_as} {_few([table[i] for i in sorted(table)])}"
            )
        out[name] = ids
    return out, [table[i] for i in range(len(table))]


# --- splitting ------------------------------------------------------------------------------------


def _carve(data: TextSplit, fractions: dict[str, float], seed: int, source: str) -> dict[str, TextSplit]:
    """``fractions`` of ``data``'s rows as new splits, the rest as train: seeded and stratified.

    Each label's rows are shuffled and given positions spread evenly over [0, 1) (a random offset
    per label); taking rows in position order, every prefix (and every window) holds the labels in
    proportion, so each split gets its share of every label that has enough rows."""
    n = len(data)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(data.labels if data.labels is not None else [0] * n):
        groups[y].append(i)
    rng = random.Random(seed)
    keyed: list[tuple[float, int, int]] = []
    for label in sorted(groups):
        idx = groups[label]
        rng.shuffle(idx)
        offset = rng.random()
        keyed += [((rank + offset) / len(idx), label, i) for rank, i in enumerate(idx)]
    order = [i for _, _, i in sorted(keyed)]
    out: dict[str, TextSplit] = {}
    start = 0
    for name, frac in fractions.items():
        take = round(n * frac)
        if take == 0:
            raise DataFileError(
                f"{source}: the {name} split is empty: {n} row(s) x {name}_fraction {frac:g} rounds to 0; "
                f"give more rows, a larger fraction or a {name}_path"
            )
        out[name] = data.take(sorted(order[start : start + take]))
        start += take
    if start >= n:
        raise DataFileError(f"{source}: no training rows left after carving {', '.join(fractions)} from {n} row(s)")
    out["train"] = data.take(sorted(order[start:]))
    return out
