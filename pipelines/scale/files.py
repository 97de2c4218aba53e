"""Batch inference over feature files on Ray Data: rows read by Ray Data's own readers, so an
input larger than one node's memory streams through the cluster with bounded object-store use.

``run_files`` lists the files (``tasks.datasets.feature_files``: a file, a glob or a folder, one
format) and checks every file's columns on the driver (a one-line refusal before any actor
starts), then builds one dataset: ``read_parquet`` / ``read_csv`` / ``read_json(lines=True)``
(JSON lines are read in chunks, not a whole file at once) -> a task that turns each block into
``__row`` and ``x`` (float32 features) -> the stage actor pools of ``batch.add_stages``. The
driver yields the output blocks as they finish and keeps none of them.

Row ids (``__row``): the ``id_column``'s integers travel with their rows through the stages.
Without one, a row's id is its position in the input (files in sorted path order, rows in file
order), the same ids the in-process path gives. Ray Data's readers do not tell a row's position
in its file, so the dataset runs with ``preserve_order``: blocks come out in input order and the
driver numbers them; inside the stages ``__row`` holds a random key per row (the per-block tally
groups by it). Keeping order costs some throughput when one block is slow (later finished blocks
wait for it), which an ``id_column`` avoids.

Memory: Ray Data's streaming executor keeps each operator's queued blocks within an
object-store budget (backpressure), so store use stays bounded whatever the input size; read
blocks are cut at about ``batch_size`` rows (an actor's unit of work), so a small store still
holds several (tests/test_scale_files.py streams 512 MiB through a 100 MiB store). Read tasks
ask for ``read_cpus`` CPUs (default 0): reading and converting is light, and a read that waited
for a CPU held by a stage actor would never run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray
import ray.data

from pipelines.scale import batch
from tasks.datasets.feature_files import ROW, Blocks, X, check_files, list_files
from tasks.datasets.feature_read import FeatureFileError, features, ids_of, iter_tables

log = logging.getLogger("slimray")


def to_inputs(table: Any, cols: list[str], id_column: str, origin: str) -> dict[str, np.ndarray]:
    """A read block as the stages' input: ``__row`` (ids, or random keys) and ``x`` (features)."""
    x = features(table, cols, origin)
    if id_column:
        rows = ids_of(table, id_column, origin)
    else:
        rows = np.random.default_rng().integers(0, 2**62, size=len(x), dtype=np.int64)
    return {ROW: rows, X: x}


def read(files: list[str], fmt: str, need: list[str], types: dict, read_cpus: float, readers: int) -> ray.data.Dataset:
    """The files as a dataset of their ``need`` columns, with Ray Data's reader for ``fmt``: one
    read task per file (no split blocks, so each read fuses with the conversion after it), at
    most ``readers`` at once (with ``read_cpus`` 0 nothing else would cap them)."""
    opts: dict[str, Any] = {
        "num_cpus": read_cpus,
        "file_extensions": None,
        "override_num_blocks": len(files),
        "concurrency": readers,
    }
    if fmt == "parquet":
        # Ray Data's V2 Parquet path lists files in a task that asks for a whole CPU, which never
        # runs while the stage actors hold every CPU; the V1 reader lists them here (we pass files)
        data_ctx = ray.data.DataContext.get_current()
        was, data_ctx.use_datasource_v2 = data_ctx.use_datasource_v2, False
        try:
            return ray.data.read_parquet(files, columns=need, **opts)
        finally:
            data_ctx.use_datasource_v2 = was
    if fmt == "csv":
        import pyarrow.csv as pcsv

        convert = pcsv.ConvertOptions(include_columns=need, column_types=types)
        return ray.data.read_csv(files, convert_options=convert, **opts)
    # JSON lines: pandas reads each file in chunks and types the columns (features() casts them
    # to float32); to_inputs takes the columns it needs (a select here would not fuse with the read)
    return ray.data.read_json(files, lines=True, **opts)


def _width(files: list[str], fmt: str, cols: list[str], types: dict) -> int:
    """Features per row, from the first row of the first file (a list column's length)."""
    first = next(iter_tables(files[:1], fmt, cols, 1, types), None)
    return features(first[1], cols, files[0]).shape[1] if first else len(cols)


def run_files(
    stage_fns: list,
    path: str,
    *,
    format: str = "auto",
    columns: list[str] | None = None,
    id_column: str = "",
    batch_size: int,
    replicas: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    window: int = 0,
    min_replicas: int = 0,
    read_cpus: float = 0.0,
) -> Blocks:
    """The rows of the files at ``path`` through ``replicas`` x ``len(stage_fns)`` actors: an
    iterator of output blocks ``{"__row": ids, "x": outputs}`` in the order they finish (input
    order without an ``id_column``); its ``summary`` (rows, rows_per_s, latency, utilisation,
    bubble fraction, restarts) is filled once every block has been read."""
    files, fmt = list_files(path, format)
    cols, types = check_files(files, fmt, columns, id_column)
    batch.configure()
    need = cols + ([id_column] if id_column else [])
    readers = max(1, min(len(files), int(ray.cluster_resources().get("CPU", 1))))
    ds = read(files, fmt, need, types, read_cpus, readers)
    # blocks of about batch_size rows of x (as batch.from_array makes them): the unit of work
    # an actor takes, and small beside the object store whatever the input size
    ds.context.target_max_block_size = batch_size * (4 * _width(files, fmt, cols, types) + 8)
    ds.context.execution_options.preserve_order = not id_column
    ds = ds.map_batches(
        to_inputs,  # type: ignore[arg-type]  # keyword arguments come through fn_kwargs
        fn_kwargs={"cols": cols, "id_column": id_column, "origin": f"a block of '{path}'"},
        batch_size=None,  # each read block as it is: a batch size would keep the read from fusing
        batch_format="pyarrow",
        num_cpus=read_cpus,
        compute=ray.data.TaskPoolStrategy(size=readers),  # as the read's, so the two fuse into one task
    )
    tally = batch.new_tally()
    ds = batch.add_stages(
        ds,
        stage_fns,
        batch_size=batch_size,
        replicas=replicas,
        min_replicas=min_replicas,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        window=window,
        tally=tally,
    )
    shape = (len(stage_fns), replicas)
    return Blocks(lambda summary: _produce(ds, tally, path, bool(id_column), shape, summary), cols)


def _produce(
    ds: ray.data.Dataset, tally: Any, path: str, keyed: bool, shape: tuple[int, int], summary: dict[str, float]
) -> Iterator[dict[str, np.ndarray]]:
    """The output blocks as they finish, numbered in input order unless ``keyed`` (ids travel
    with the rows); fills ``summary`` once the last block is out."""
    start = last = time.perf_counter()
    done = 0
    try:
        for block in batch.iter_outputs(ds):
            n = len(block[X])
            rows = block[ROW] if keyed else np.arange(done, done + n, dtype=np.int64)
            done += n
            yield {ROW: rows, X: block[X]}
            if time.perf_counter() - last >= batch.PROGRESS_EVERY_S:
                last = time.perf_counter()
                log.info("inference: %d rows of '%s' (%.0f rows/s)", done, path, done / (last - start))
        wall = time.perf_counter() - start
        records, started = ray.get(tally.all.remote())
    except ray.exceptions.RayError as e:
        raise _one_line(e) from None
    finally:
        ray.kill(tally)
    stages, replicas = shape
    summary.update(batch.summarize(records, stages, replicas, done, wall, 0))
    summary["actors_started"] = float(started)  # every actor built, a restart that got no block too
    summary["restarts"] = float(max(0, started - replicas * stages))


def _one_line(e: BaseException) -> Exception:
    """A file's refusal from a worker as the ``FeatureFileError`` it was, anything else one line."""
    first = batch._first_sentence(e)
    prefix = f"{FeatureFileError.__name__}: "
    if first.startswith(prefix):
        return FeatureFileError(first[len(prefix) :])
    return RuntimeError(
        f"inference: {first} (each actor is restarted at most {batch.MAX_RESTARTS} times; "
        f"free: {ray.available_resources()})"
    )


def map_files(stage_fns: list, path: str, **options: Any) -> Blocks:
    """``run_files`` for the engine's ``ctx.map_files``."""
    return run_files(stage_fns, path, **options)
