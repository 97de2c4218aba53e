"""Model inputs from feature files (Parquet, CSV, newline-delimited JSON), read in chunks.

One copy of what both batch-inference paths need, so they agree row for row: which files a path
names, the format, which columns are features, the float32 matrix ``x`` of a chunk and its row
ids. The in-process path (``StepContext.map_files`` without an engine) reads with pyarrow here;
the engine's path (``pipelines.scale.files``) reads with Ray Data's readers and converts each
block with ``features`` / ``ids_of`` (``tasks.datasets.feature_read``, the chunk half).

- **Files**: ``path`` is a file, a glob (``data/part-*.parquet``) or a folder (every file under
  it with a known extension, hidden ``.x`` / ``_x`` files skipped), in sorted path order.
- **Format**: from the extension (``.parquet`` / ``.pq``, ``.csv``, ``.json`` / ``.jsonl`` /
  ``.ndjson``: one JSON object per line) unless ``format`` says; one format per input.
- **Features**: ``columns`` lists numeric columns (stacked as float32 features, in that order)
  or names one list column (lists of numbers, every row the same length). Default: every
  numeric column except the id column (or the only list column when there is no numeric one).
  A null feature becomes NaN.
- **Row ids**: the ``id_column``'s integers when given; else the row's position in the input
  (files in sorted path order, rows in file order, counting from 0).

Every refusal is one ``FeatureFileError`` line naming the path or file (and its columns).
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.datasets.feature_read import (
    FeatureFileError,
    features,
    ids_of,
    is_listlike,
    is_numeric,
    iter_tables,
    names_of,
    read_types,
)

__all__ = ["FORMATS", "ROW", "X", "Blocks", "FeatureFileError", "check_files", "list_files", "run_in_process"]

ROW, X = "__row", "x"  # the output block's columns (as in pipelines.scale.batch)
EXTENSIONS = {
    **{".parquet": "parquet", ".pq": "parquet", ".csv": "csv"},
    **{".json": "json", ".jsonl": "json", ".ndjson": "json"},
}
FORMATS = ("auto", "parquet", "csv", "json")


def list_files(path: str, fmt: str = "auto") -> tuple[list[str], str]:
    """The files ``path`` names (a file, a glob or a folder), sorted, and their one format."""
    if fmt not in FORMATS:
        raise FeatureFileError(f"input_format: {fmt!r} is not one of {list(FORMATS)}")
    if not path:
        raise FeatureFileError("input_path: empty (a file, a glob or a folder of feature files)")
    if any(c in path for c in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        where = f"no files match '{path}'"
    elif os.path.isdir(path):
        files = sorted(
            str(p)
            for p in Path(path).rglob("*")
            if p.is_file()
            and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
            and (fmt != "auto" or p.suffix.lower() in EXTENSIONS)
        )
        where = f"no {'/'.join(EXTENSIONS) if fmt == 'auto' else fmt} files in folder '{path}'"
    elif os.path.isfile(path):
        files, where = [path], ""
    else:
        raise FeatureFileError(f"input_path: '{path}' does not exist")
    if not files:
        raise FeatureFileError(f"input_path: {where}")
    formats = {format_of(f, fmt) for f in files}
    if len(formats) > 1:
        raise FeatureFileError(f"input_path: '{path}' mixes formats {sorted(formats)}; set input_format or split it")
    return files, formats.pop()


def format_of(file: str, fmt: str = "auto") -> str:
    """``fmt`` when given, else the format the file's extension names."""
    if fmt != "auto":
        return fmt
    found = EXTENSIONS.get(Path(file).suffix.lower())
    if found is None:
        raise FeatureFileError(
            f"input_path: '{file}': unknown format '{Path(file).suffix or Path(file).name}' "
            f"(auto reads {', '.join(EXTENSIONS)}); rename the file or set input_format"
        )
    return found


def read_schema(file: str, fmt: str) -> Any:
    """The file's ``pyarrow.Schema``: a Parquet footer, the first block of a CSV / JSON file."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            return pq.read_schema(file)
        reader = pcsv.open_csv(file) if fmt == "csv" else pjson.open_json(file)
        return reader.schema
    except Exception as e:  # noqa: BLE001 - Arrow raises several types for a damaged file
        detail = " ".join(str(e).split())[:200]
        raise FeatureFileError(f"{file}: could not be read as {fmt} ({detail})") from None


def pick_columns(schema: Any, columns: list[str] | None, id_column: str, file: str) -> list[str]:
    """The feature columns: those named (each must exist), else every numeric column but the id."""
    names = list(schema.names)
    wanted = [id_column] if id_column else []
    if columns:
        wanted += list(columns)
    for c in wanted:
        if c not in names:
            key = "id_column" if c == id_column else "input_columns"
            raise FeatureFileError(f"{key}: {file} has no column {c!r} (columns: {names_of(names)})")
    if columns:
        if len(columns) > 1 or not is_listlike(schema.field(columns[0]).type):
            bad = [c for c in columns if not is_numeric(schema.field(c).type)]
            if bad:
                kind = schema.field(bad[0]).type
                raise FeatureFileError(
                    f"input_columns: column {bad[0]!r} of {file} is {kind}, not numbers "
                    f"(name numeric columns, or one column of number lists)"
                )
        return list(columns)
    numeric = [c for c in names if c != id_column and is_numeric(schema.field(c).type)]
    lists = [c for c in names if c != id_column and is_listlike(schema.field(c).type)]
    if numeric:
        return numeric
    if len(lists) == 1:
        return lists
    raise FeatureFileError(
        f"input_columns: {file} has no numeric columns to use as features (columns: {names_of(names)}); "
        f"name them, or one column of number lists"
    )


def check_files(files: list[str], fmt: str, columns: list[str] | None, id_column: str) -> tuple[list[str], dict]:
    """The feature columns (``pick_columns`` on the first file) and the types to read them as,
    each file checked to have them: a one-line refusal before any work. Costs a Parquet footer,
    or the first block of a CSV / JSON file, per file."""
    schema = read_schema(files[0], fmt)
    cols = pick_columns(schema, columns, id_column, files[0])
    need = cols + ([id_column] if id_column else [])
    for file in files[1:]:
        names = list(read_schema(file, fmt).names)
        missing = [c for c in need if c not in names]
        if missing:
            key = "id_column" if missing[0] == id_column else "input_columns"
            raise FeatureFileError(f"{key}: {file} has no column {missing[0]!r} (columns: {names_of(names)})")
    return cols, read_types(schema, cols, id_column)


class Blocks:
    """Output blocks ``{"__row": ids, "x": outputs}`` as they finish; ``summary`` (rows,
    rows_per_s, latency, utilisation) is complete once every block has been read; ``columns``
    are the feature columns read (known before the first block)."""

    def __init__(self, produce: Callable[[dict[str, float]], Iterator[dict[str, np.ndarray]]], columns: list[str]):
        self.summary: dict[str, float] = {}
        self.columns = columns
        self._blocks = produce(self.summary)

    def __iter__(self) -> Blocks:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._blocks)


def run_in_process(
    stage_fns: list[Callable[[], Callable]],
    path: str,
    *,
    format: str = "auto",
    columns: list[str] | None = None,
    id_column: str = "",
    batch_size: int = 1024,
) -> Blocks:
    """The files' rows through the chain of stages here, chunk after chunk (no engine)."""
    import torch

    files, fmt = list_files(path, format)
    cols, types = check_files(files, fmt, columns, id_column)

    def produce(summary: dict[str, float]) -> Iterator[dict[str, np.ndarray]]:
        fns = [make() for make in stage_fns]
        start, done, lat, busy = time.perf_counter(), 0, [], [0.0] * len(fns)
        for file, table in iter_tables(files, fmt, cols + ([id_column] if id_column else []), batch_size, types):
            t0 = time.perf_counter()
            x = features(table, cols, file)
            rows = ids_of(table, id_column, file) if id_column else np.arange(done, done + len(x), dtype=np.int64)
            y = torch.from_numpy(x)
            for k, fn in enumerate(fns):
                t = time.perf_counter()
                y = fn(y)
                busy[k] += time.perf_counter() - t
            done += len(x)
            lat.append(time.perf_counter() - t0)
            yield {ROW: rows, X: y.detach().cpu().numpy()}
        wall = max(time.perf_counter() - start, 1e-9)
        summary.update(
            rows=done,
            wall_s=wall,
            rows_per_s=done / wall,
            batch_latency_p50_ms=float(np.median(lat or [0.0])) * 1e3,
            bubble_fraction=1.0 - sum(busy) / (len(fns) * wall),
            **{f"util_replica0_stage{k}": b / wall for k, b in enumerate(busy)},
        )

    return Blocks(produce, cols)
