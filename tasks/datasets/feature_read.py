"""Reading feature files in chunks and turning a chunk into model inputs.

The lower half of ``tasks.datasets.feature_files``: the column types, a chunk's float32 features
``x`` and its int64 row ids, and a streamed reader (pyarrow, one chunk in memory at a time). Both
batch-inference paths convert chunks with ``features`` / ``ids_of`` from here, so they agree row
for row; the engine's path reads with Ray Data's readers instead of ``iter_tables``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

_SHOW = 12  # column names shown in one error line


class FeatureFileError(ValueError):
    """A feature file or path that cannot be read as model inputs: one line naming it."""


def names_of(names: list[str]) -> str:
    """Column names for an error line (the first dozen)."""
    more = f", ... ({len(names)} in all)" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


def is_numeric(t: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def is_listlike(t: Any) -> bool:
    import pyarrow as pa

    t = getattr(t, "storage_type", t)  # an extension type (Ray's tensor columns) by its storage
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def read_types(schema: Any, cols: list[str], id_column: str) -> dict:
    """Column types for the text readers (CSV, JSON): numbers as float64 (cast to float32 after,
    as for Parquet), ids as int64, lists as found; so a column inferred as integers from a file's
    first block still reads a later ``1.5``."""
    import pyarrow as pa

    types = {c: pa.float64() for c in cols if not is_listlike(schema.field(c).type)}
    if id_column:
        types[id_column] = pa.int64()
    return types


def features(table: Any, columns: list[str], origin: str) -> np.ndarray:
    """The chunk's features as float32 ``[rows, features]`` (nulls as NaN)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = table.column_names
    for c in columns:
        if c not in names:
            raise FeatureFileError(f"input_columns: {origin} has no column {c!r} (columns: {names_of(names)})")
    n = table.num_rows
    if len(columns) == 1 and is_listlike(table.schema.field(columns[0]).type):
        col = table.column(columns[0]).combine_chunks()
        col = getattr(col, "storage", col)
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if n and (col.null_count or lengths.min() != lengths.max()):
            raise FeatureFileError(
                f"input_columns: the lists in column {columns[0]!r} of {origin} differ in length "
                f"({int(lengths.min())}..{int(lengths.max())}) or are null; every row needs the same length"
            )
        flat = pc.cast(pc.list_flatten(col), pa.float32()).to_numpy(zero_copy_only=False)
        return np.ascontiguousarray(flat.reshape(n, -1) if n else flat.reshape(0, 0))
    out = np.empty((n, len(columns)), dtype=np.float32)
    for j, c in enumerate(columns):
        col = table.column(c)
        if not is_numeric(col.type):
            raise FeatureFileError(f"input_columns: column {c!r} of {origin} is {col.type}, not numbers")
        out[:, j] = pc.cast(col, pa.float32()).to_numpy()
    return out


def ids_of(table: Any, id_column: str, origin: str) -> np.ndarray:
    """The chunk's ``id_column`` as int64 (every value an integer, none null)."""
    import pyarrow as pa

    if id_column not in table.column_names:
        raise FeatureFileError(
            f"id_column: {origin} has no column {id_column!r} (columns: {names_of(table.column_names)})"
        )
    col = table.column(id_column)
    if not pa.types.is_integer(col.type) or col.null_count:
        raise FeatureFileError(
            f"id_column: column {id_column!r} of {origin} is {col.type}"
            f"{' with nulls' if col.null_count else ''}; ids must be integers"
        )
    return col.to_numpy().astype(np.int64, copy=False)


def _batches(file: str, fmt: str, columns: list[str], chunk_rows: int, types: dict) -> Iterator[Any]:
    """The file's record batches of ``columns``, streamed with pyarrow's reader for ``fmt``."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    if fmt == "parquet":
        yield from pq.ParquetFile(file).iter_batches(batch_size=chunk_rows, columns=columns)
    elif fmt == "csv":
        yield from pcsv.open_csv(file, convert_options=pcsv.ConvertOptions(include_columns=columns, column_types=types))
    else:
        for batch in pjson.open_json(file, parse_options=json_options(columns, types)):
            yield batch.select(columns)


def iter_tables(
    files: list[str], fmt: str, columns: list[str], chunk_rows: int, types: dict | None = None
) -> Iterator[tuple[str, Any]]:
    """``(file, table)`` chunks of at most ``chunk_rows`` rows of ``columns``, file after file,
    streamed (a Parquet row group, a CSV / JSON block at a time): memory stays one chunk."""
    import pyarrow as pa

    for file in files:
        try:
            buf: list[Any] = []
            rows = 0
            for batch in _batches(file, fmt, columns, chunk_rows, types or {}):
                buf.append(batch)
                rows += batch.num_rows
                while rows >= chunk_rows:
                    table = pa.Table.from_batches(buf).combine_chunks()
                    yield file, table.slice(0, chunk_rows)
                    rest = table.slice(chunk_rows)
                    buf, rows = rest.to_batches(), rest.num_rows
            if rows:
                yield file, pa.Table.from_batches(buf)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
            detail = " ".join(str(e).split())[:200]
            raise FeatureFileError(f"{file}: could not be read as {fmt} ({detail})") from None


def json_options(columns: list[str], types: dict | None) -> Any:
    """Only ``columns`` of each JSON object, the numbers typed as ``read_types`` says."""
    import pyarrow as pa
    import pyarrow.json as pjson

    fields = [pa.field(c, t) for c, t in (types or {}).items()]
    keep = [c for c in columns if c not in (types or {})]  # list columns: inferred, kept
    unexpected = "infer" if keep else "ignore"
    return pjson.ParseOptions(explicit_schema=pa.schema(fields), unexpected_field_behavior=unexpected)
