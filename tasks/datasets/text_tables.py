"""The tables in one of the user's data files or ``save_to_disk`` folders, opened with ``datasets``.

Formats, from the extension unless ``format`` says: ``.csv``, ``.jsonl`` / ``.json``, ``.parquet``,
or a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``. Every read failure
becomes one ``DataFileError`` line naming the file (the readers below raise many types).

Offline, and nothing in the user's home: the packaged ``csv`` / ``json`` / ``parquet`` builders
read local files without contacting the Hub, so ``HF_DATASETS_OFFLINE`` is not needed; their Arrow
cache goes to a temporary directory removed after reading, with ``keep_in_memory=True``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.datasets.text_splits import DataFileError

FORMATS = ("auto", "csv", "json", "jsonl", "parquet", "disk")
_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# a DatasetDict folder's split names for each of our splits
_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid", "dev"), "test": ("test",)}


def open_tables(key: str, file: str, fmt: str) -> dict[str, Any]:
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


def pick_table(tables: dict[str, Any], split: str, file: str, required: bool) -> Any:
    """``(source, Dataset)`` of ``split`` in what one file or folder holds (a one-table file: that table);
    None when a DatasetDict folder has no such split and it is not ``required``."""
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
