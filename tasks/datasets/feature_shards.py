"""Predictions streamed into safetensors shards, never one array of all rows in memory.

Layout (files of the step's run): ``predictions-00000.safetensors``, ``predictions-00001...``,
each holding ``row`` (int64 row ids: the ``id_column``'s values, else the input position) and
``y`` (the outputs of those rows), cut at about ``SHARD_BYTES``; and ``predictions.json``, the
index: every shard's file, rows, bytes and sha256, the total rows, the tensors' names, the
feature columns read and the id column. The index also goes into the step's (signed) report, so
a reader checks each shard against it (``read_shards``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable

import numpy as np

from tasks.datasets.feature_files import ROW, X

SHARD_BYTES = 64 << 20  # outputs (+ ids) per shard
INDEX = "predictions.json"


def shard_name(i: int) -> str:
    return f"predictions-{i:05d}.safetensors"


def write_shards(
    blocks: Iterable[dict[str, np.ndarray]],
    log_file: Callable[[str, bytes], None],
    *,
    features: list[str],
    id_column: str = "",
    shard_bytes: int = 0,
) -> dict:
    """Output blocks ``{"__row", "x"}`` gathered into shards of about ``shard_bytes`` and handed to
    ``log_file(name, bytes)`` one by one (then the index); returns the index."""
    from safetensors.numpy import save

    shard_bytes = shard_bytes or SHARD_BYTES
    index: dict = {"shards": [], "rows": 0, "bytes": 0, "columns": ["row", "y"]}
    index.update(features=list(features), id_column=id_column)
    rows: list[np.ndarray] = []
    ys: list[np.ndarray] = []

    def flush() -> None:
        if not rows:
            return
        data = save({"row": np.concatenate(rows).astype(np.int64), "y": np.ascontiguousarray(np.concatenate(ys))})
        name = shard_name(len(index["shards"]))
        log_file(name, data)
        n = sum(len(r) for r in rows)
        digest = hashlib.sha256(data).hexdigest()
        index["shards"].append({"file": name, "rows": n, "bytes": len(data), "sha256": digest})
        index["rows"] += n
        index["bytes"] += len(data)
        rows.clear()
        ys.clear()

    size = 0
    for block in blocks:
        rows.append(block[ROW])
        ys.append(block[X])
        size += block[ROW].nbytes + block[X].nbytes
        if size >= shard_bytes:
            flush()
            size = 0
    flush()
    log_file(INDEX, json.dumps(index, indent=1).encode())
    return index


def read_shards(index: dict, read: Callable[[str], bytes]) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """``(row, y)`` of each shard the index lists, shard after shard, each checked against the
    index's sha256 (``read(name)`` gives a file's bytes)."""
    from safetensors.numpy import load

    for shard in index["shards"]:
        data = read(shard["file"])
        if hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise ValueError(f"{shard['file']}: sha256 differs from the predictions index")
        tensors = load(data)
        yield tensors["row"], tensors["y"]
