"""Batch inference over feature files (pipelines/scale/files.py, tasks/datasets/feature_*.py):
the engine's path (Ray Data readers, real actors) and the in-process path give the same outputs
row for row for Parquet, CSV and JSON lines; bad inputs are one line before any work; the
``inference`` step streams predictions into safetensors shards; and an input several times the
object store's size streams through it with bounded store use."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.scale import files
from tasks.core.context import StepContext
from tasks.datasets import feature_shards
from tasks.datasets.feature_files import FeatureFileError
from tasks.models.build import build_model, complete_arch, load_model, make_artifact
from tasks.steps.inference import InferenceConfig, Predictor, run

REPO = Path(__file__).resolve().parents[1]
FEATURES = [f"f{i}" for i in range(6)]


def _mlp():
    arch = complete_arch({"_target_": "tasks.models.zoo.MLP", "hidden": [16]}, [len(FEATURES)], 3)
    torch.manual_seed(0)
    return make_artifact(build_model(arch), arch, name="mlp", kind="teacher")


def _table(n: int, start: int = 0) -> pa.Table:
    """Rows with an id (not their position), six float features, an int one and a text column."""
    rng = np.random.default_rng(start)
    x = rng.standard_normal((n, len(FEATURES))).astype(np.float32)
    cols = {"id": 1000 + 7 * np.arange(start, start + n), **{c: x[:, i] for i, c in enumerate(FEATURES)}}
    return pa.table({**cols, "name": [f"row{i}" for i in range(start, start + n)]})


def _write(table: pa.Table, path: Path) -> None:
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=100)
    elif path.suffix == ".csv":
        pcsv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))


def _inputs(tmp_path: Path, ext: str, n: int = 900) -> tuple[Path, pa.Table]:
    """Two files of one format in a folder (a hidden one beside them is skipped)."""
    folder = tmp_path / ext
    folder.mkdir()
    parts = [_table(n // 3), _table(n - n // 3, n // 3)]
    for i, part in enumerate(parts):
        _write(part, folder / f"part-{i}.{ext}")
    _write(_table(5, 99_999), folder / f"_skipped.{ext}")
    return folder, pa.concat_tables(parts)


def _collect(blocks) -> tuple[np.ndarray, np.ndarray]:
    got = list(blocks)
    return np.concatenate([b["__row"] for b in got]), np.concatenate([b["x"] for b in got])


def _expected(art, table: pa.Table) -> np.ndarray:
    x = np.stack([table.column(c).to_numpy() for c in FEATURES], axis=1).astype(np.float32)
    with torch.no_grad():
        return load_model(art)(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(
    "ext, pattern, id_column",
    [("parquet", "", ""), ("csv", "", "id"), ("jsonl", "part-*.jsonl", "")],
    ids=["parquet-folder-positions", "csv-folder-ids", "jsonl-glob-positions"],
)
@pytest.mark.slow
def test_engine_and_in_process_paths_agree_row_for_row(ray_local, tmp_path, ext, pattern, id_column):
    art = _mlp()
    folder, table = _inputs(tmp_path, ext)
    path = str(folder / pattern) if pattern else str(folder)
    stage = [functools.partial(Predictor, art, "torch", "cpu", 1)]
    opts = {"columns": None if id_column else FEATURES, "id_column": id_column, "batch_size": 128}
    rows_here, y_here = _collect(StepContext().map_files(stage, path, **opts))
    blocks = files.map_files(stage, path, replicas=2, **opts)
    rows_ray, y_ray = _collect(blocks)

    want_rows = table.column("id").to_numpy() if id_column else np.arange(len(table))
    np.testing.assert_array_equal(rows_here, want_rows)  # in-process: input order, ids kept
    order = np.argsort(rows_ray)
    np.testing.assert_array_equal(rows_ray[order], want_rows)  # every row exactly once
    np.testing.assert_allclose(y_ray[order], y_here, atol=1e-6)
    np.testing.assert_allclose(y_here, _expected(art, table), atol=1e-6)
    assert blocks.columns == FEATURES  # with id_column, every numeric column but the id
    assert blocks.summary["rows"] == len(table) and blocks.summary["restarts"] == 0
    assert blocks.summary["util_replica0_stage0"] > 0 and blocks.summary["util_replica1_stage0"] > 0


def test_bad_inputs_are_one_line_naming_the_file_before_any_work(tmp_path):
    folder, _ = _inputs(tmp_path, "csv", n=30)
    csv = str(folder / "part-0.csv")
    (tmp_path / "mixed").mkdir()
    _write(_table(3), tmp_path / "mixed" / "a.parquet")
    _write(_table(3), tmp_path / "mixed" / "b.csv")
    cases = [
        (str(tmp_path / "nothing.parquet"), None, "", "input_path: '.*nothing.parquet' does not exist"),
        (str(tmp_path / "none-*.csv"), None, "", "input_path: no files match"),
        (csv, ["f0", "nope"], "", r"input_columns: .*part-0.csv has no column 'nope' \(columns: id, f0, f1"),
        (str(folder), None, "key", "id_column: .*part-0.csv has no column 'key'"),
        (str(tmp_path / "mixed"), None, "", r"input_path: '.*mixed' mixes formats \['csv', 'parquet'\]"),
        (csv, ["f0", "name"], "", "input_columns: column 'name' of .*part-0.csv is string, not numbers"),
    ]
    never = [functools.partial(pytest.fail, "a stage was built")]
    for path, columns, id_column, message in cases:
        for engine in (StepContext().map_files, files.map_files):  # refused before Ray is asked
            start = time.perf_counter()
            with pytest.raises(FeatureFileError, match=message) as err:
                engine(never, path, columns=columns, id_column=id_column, batch_size=8)
            assert "\n" not in str(err.value) and time.perf_counter() - start < 5


class FilesEngine:
    """The engine's side of ``ctx.map_files`` without MLflow: real Ray Data actors; files kept."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.metrics: dict[str, float] = {}

    def map_files(self, stage_fns, path, **options):
        return files.map_files(stage_fns, path, **options)

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_file(self, name, data):
        self.files[name] = data


def _read_back(index: dict, stored) -> tuple[np.ndarray, np.ndarray]:
    read = stored.__getitem__ if isinstance(stored, dict) else stored
    parts = list(feature_shards.read_shards(index, read))
    rows, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    order = np.argsort(rows)
    return rows[order], y[order]


@pytest.mark.slow
def test_inference_step_streams_predictions_into_safetensors_shards(ray_local, tmp_path, monkeypatch):
    monkeypatch.setattr(feature_shards, "SHARD_BYTES", 4096)  # several shards from 900 rows
    art = _mlp()
    folder, table = _inputs(tmp_path, "parquet")
    cfg = InferenceConfig(replicas=2, micro_batch=128, input_path=str(folder), id_column="id")
    engine = FilesEngine()
    report = run(art, None, cfg=cfg, ctx=StepContext(tracker=engine))

    index = report.data["predictions"]
    assert json.loads(engine.files["predictions.json"]) == index
    assert index["rows"] == len(table) and index["features"] == FEATURES and index["columns"] == ["row", "y"]
    assert len(index["shards"]) > 1 and index["shards"][0]["file"] == "predictions-00000.safetensors"
    rows, y = _read_back(index, engine.files)
    np.testing.assert_array_equal(rows, table.column("id").to_numpy())
    np.testing.assert_allclose(y, _expected(art, table), atol=1e-6)
    assert engine.metrics["prediction_rows"] == len(table)
    assert engine.metrics["prediction_shards"] == len(index["shards"])
    assert engine.metrics["prediction_bytes"] == sum(s["bytes"] for s in index["shards"])

    here = StepContext()  # no engine: the same shards, in input order, kept in ctx.files
    glob = str(folder / "part-*.parquet")
    local = run(art, None, cfg=InferenceConfig(micro_batch=128, input_path=glob, input_columns=FEATURES), ctx=here)
    rows_here, y_here = _read_back(local.data["predictions"], here.files)
    np.testing.assert_array_equal(rows_here, np.arange(len(table)))
    np.testing.assert_allclose(y_here, y, atol=1e-6)
    engine.files["predictions-00000.safetensors"] = here.files["predictions-00001.safetensors"]
    with pytest.raises(ValueError, match="predictions-00000.safetensors: sha256 differs"):
        _read_back(index, engine.files)


def test_inference_config_checks_the_file_keys():
    from tasks.core.checks import BadValue

    for kwargs, key in [
        ({"input_path": "x.csv", "input_format": "xml"}, "input_format"),
        ({"id_column": "id"}, "id_column"),
        ({"input_columns": ["f0"]}, "input_columns"),
    ]:
        with pytest.raises(BadValue, match=f"^{key}: "):
            InferenceConfig(**kwargs)
    assert InferenceConfig(input_path="d/", input_format="json", input_columns=["v"], id_column="id").input_path


BOUNDED = textwrap.dedent(
    """
    import functools, json, sys, threading, time
    import numpy as np, pyarrow as pa, pyarrow.parquet as pq, ray, torch
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address
    from pipelines.scale import files

    folder, n_files, rows_per_file, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    for f in range(n_files):  # float32 features as one list column, ids out of order
        x = np.random.default_rng(f).standard_normal((rows_per_file, width), dtype=np.float32)
        ids = np.arange(f * rows_per_file, (f + 1) * rows_per_file)[::-1].copy()
        col = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), width)
        pq.write_table(pa.table({"id": ids, "x": col}), f"{folder}/part-{f:02d}.parquet", row_group_size=8192)

    def tiny():
        torch.manual_seed(0)
        return torch.nn.Linear(width, 4).requires_grad_(False)

    ray.init(address="local", num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False,
             logging_level="WARNING")
    state, peak, done = get_state_from_address(ray.get_runtime_context().gcs_address), [0, 0, 0], threading.Event()

    def poll():  # what `ray memory --stats-only` reads
        while not done.is_set():
            st = get_memory_info_reply(state).store_stats
            peak[0] = max(peak[0], st.object_store_bytes_used + st.object_store_bytes_fallback)
            peak[1], peak[2] = st.object_store_bytes_avail, st.spilled_bytes_total
            time.sleep(0.1)

    threading.Thread(target=poll, daemon=True).start()
    start = time.perf_counter()
    seen = np.zeros(n_files * rows_per_file, dtype=np.int64)
    blocks = files.map_files([tiny], folder, id_column="id", batch_size=8192, replicas=2)
    for block in blocks:
        np.add.at(seen, block["__row"], 1)
        assert block["x"].shape[1] == 4
    done.set()
    time.sleep(0.2)
    print(json.dumps({"rows": int(seen.size), "once": int((seen == 1).sum()), "peak": peak[0],
                      "capacity": peak[1], "spilled": peak[2], "wall_s": time.perf_counter() - start,
                      "summary_rows": blocks.summary["rows"]}))
    """
)


@pytest.mark.slow
@pytest.mark.integration
def test_an_input_five_times_the_object_store_streams_with_bounded_store_use(tmp_path):
    """Its own Ray (a 100 MiB store) in a subprocess: 500+ MiB of float32 features from 8 Parquet
    files through 2 replicas; every row comes back exactly once and the store never overflows."""
    n_files, rows, width = 8, 32_768, 512  # 8 x 64 MiB of features
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a new Ray, not the session's
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-c", BOUNDED, str(tmp_path), str(n_files), str(rows), str(width)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"\nbounded store: {n_files * rows * width * 4 / 2**20:.0f} MiB of features through a "
        f"{got['capacity'] / 2**20:.0f} MiB store in {got['wall_s']:.1f} s; peak use "
        f"{got['peak'] / 2**20:.1f} MiB, spilled {got['spilled'] / 2**20:.1f} MiB"
    )
    assert n_files * rows * width * 4 >= 5 * got["capacity"]
    assert got["once"] == got["rows"] == n_files * rows == got["summary_rows"]
    assert 0 < got["peak"] <= got["capacity"]


@pytest.mark.slow
def test_the_inference_pipeline_logs_the_shards_to_its_step_run(ray_local, workdir):
    """``slimray pipeline=inference`` with ``input_path``: the engine's ``StepTracker.map_files``
    streams the file rows, the shards and their index land in the step's MLflow run."""
    from mlflow.tracking import MlflowClient

    from pipelines.config.compose import load_config
    from pipelines.run import session

    width, n = 40, 700  # the default data's (MNIST-1D) input width
    x = np.random.default_rng(3).standard_normal((n, width)).astype(np.float32)
    (workdir / "feats").mkdir()
    pq.write_table(pa.table({"key": np.arange(n)[::-1] * 2, "x": list(x)}), workdir / "feats" / "a.parquet")
    p = "pipeline.steps.inference.params"
    overrides = [
        "pipeline=inference",
        f"tracking.uri=sqlite:///{workdir}/mlflow.db",
        "pipeline.steps.model.params.model.hidden=[32,32,32]",
        *[f"{p}.{k}" for k in ("stages=2", "micro_batch=100", "cpus_per_actor=0.5", "id_column=key")],
        f"{p}.input_path={workdir / 'feats'}",
    ]
    cfg = load_config(overrides)
    spec, ray_cfg, tracking = session.validate(cfg)
    outcome = session.execute(cfg, spec, ray_cfg, tracking, overrides)
    assert outcome.exit_code == 0
    client = MlflowClient(outcome.uri)
    run_ = client.search_runs([outcome.experiment_id], filter_string="tags.mlflow.runName = 'inference'")[0]
    assert run_.data.metrics["prediction_rows"] == n and run_.data.metrics["prediction_shards"] == 1
    local = Path(client.download_artifacts(run_.info.run_id, "", str(workdir / "got")))
    index = json.loads((local / "predictions.json").read_text())
    assert index["features"] == ["x"] and index["id_column"] == "key"
    rows, y = _read_back(index, lambda name: (local / name).read_bytes())
    np.testing.assert_array_equal(rows, np.arange(n) * 2)
    assert y.shape == (n, 10) and np.isfinite(y).all()
