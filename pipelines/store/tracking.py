"""MLflow layout: experiment per pipeline, a parent run per execution, a child run per step,
a grandchild per sweep trial. Step outputs are artifacts of their step run (``output/``),
found again by the ``slimray.cache_key`` tag.

The driver and the Ray workers both talk to MLflow through ``MlflowClient`` with an explicit
tracking URI, so nothing depends on process-global MLflow state.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipelines.store import artifacts, signing

TAG = "slimray."
OUTPUT_DIR = "output"
PUBLISH_DIR = "publish"  # a step's Publication (tasks.core.types), published on the parent run by the engine
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # the UI opens on training runs


def _sqlite_wal(dbapi_connection, _record) -> None:
    """MLflow's sqlite store commits each call (and each part of a ``log_batch``) with a full
    fsync: ~20 ms per commit on an ordinary disk, most of a step's engine overhead, and ~5 s to
    create a new store. WAL with ``synchronous=NORMAL`` makes commits ~4x cheaper and is still
    safe for concurrent local processes; a power cut may drop the last commits, never corrupts
    the file. Set ``SLIMRAY_SQLITE_WAL=0`` to keep sqlite's defaults."""
    if type(dbapi_connection).__module__.split(".")[0] != "sqlite3":
        return
    import sqlite3

    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:  # e.g. a read-only database: keep its defaults
        pass
    finally:
        cursor.close()


if os.environ.get("SLIMRAY_SQLITE_WAL", "1") != "0":
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _sqlite_wal):
        event.listen(Engine, "connect", _sqlite_wal)


def quiet_mlflow() -> None:
    """MLflow prints "View run <name> at: <url>" for every run it ends against a server and a
    progress bar for every download; a pipeline ends and loads dozens, so the console drowns
    in them (the step table and the final line give the run's URL). Off, in the driver and in
    every worker (a joined cluster's workers do not inherit the driver's environment); a user's
    own setting wins. Called when this module is imported: the driver and every worker import it
    before they open a run."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


quiet_mlflow()


def metric_name(key: str) -> str:
    """MLflow allows alphanumerics, ``_ - . : /`` and spaces in metric names; map the rest to ``_``."""
    return re.sub(r"[^\w\-. :/]", "_", key)


def resolve_uri(configured: str | None) -> str:
    """The store: an explicit ``tracking.uri`` wins (Hydra's and MLflow's convention), then
    ``MLFLOW_TRACKING_URI``, then ``sqlite:///<cwd>/mlflow.db`` (MLflow's default)."""
    return resolve_store(configured)[0]


def resolve_store(configured: str | None) -> tuple[str, str]:
    """(uri, where it came from: ``tracking.uri``, ``MLFLOW_TRACKING_URI`` or ``default``)."""
    if configured:
        return configured, "tracking.uri"
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return (env, "MLFLOW_TRACKING_URI") if env else (f"sqlite:///{Path.cwd() / 'mlflow.db'}", "default")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id (created, or restored if deleted), marked as a model-training
    experiment so that MLflow 3's UI opens it on runs rather than on GenAI traces."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags=dict([EXPERIMENT_KIND]))
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
        client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return exp.experiment_id


def flatten(d, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and any(isinstance(v, (dict, list)) for v in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = str(d)[:6000]
    return out


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    items = [Param(k, v) for k, v in flatten(params).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100], synchronous=True)


def create_run(client: MlflowClient, experiment_id: str, name: str, parent: str | None, tags: dict[str, str]) -> str:
    all_tags = {"mlflow.runName": name, **tags}
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    return client.create_run(experiment_id, tags=all_tags, run_name=name).info.run_id


MAX_CANDIDATES = 50  # runs planted with another key's id stay candidates: look past a few dozen


def find_cached(client: MlflowClient, experiment_id: str, key: str):
    """The newest finished, non-cached run that stored the output for ``key`` under manifests
    signed for it, or None. Candidates are tried newest first (``artifacts.trusted_entry``): a
    malformed, forged or planted one is tagged untrusted and skipped, one signed with another
    key is skipped untagged, and the lookup goes on to the next."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG}cache_key` = '{key}' and tags.`{TAG}cached` = 'false' "
            f"and tags.`{TAG}stored` = 'true' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=MAX_CANDIDATES,
    )
    return next((r for r in runs if artifacts.trusted_entry(client, r, key)), None)


def load_output(client: MlflowClient, run_id: str):
    """The output ``run_id`` stored under ``output/``, verified against its signed manifest."""
    key = client.get_run(run_id).data.tags.get(f"{TAG}cache_key", "")
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, OUTPUT_DIR, tmp)
        context = artifacts.entry_context(run_id, key, OUTPUT_DIR)
        return artifacts.load(local, origin=f"cached output of run {run_id}", context=context)


def open_runs(client: MlflowClient, experiment_id: str, root: str) -> list[str]:
    runs = client.search_runs(
        [experiment_id],
        max_results=5000,
        filter_string=f"tags.`{TAG}root` = '{root}' and attributes.status = 'RUNNING'",
    )
    return [r.info.run_id for r in runs]


class StepTracker:
    """What a running step's ``ctx.tracker`` is: metrics, files, outputs, registry for one run.

    Metrics are buffered and sent with ``log_batch`` (per-call logging over HTTP is slow).
    """

    def __init__(self, client: MlflowClient, run_id: str, root_run: str, flush_every_s: float = 2.0):
        self.client = client
        self.uri = client.tracking_uri
        self.run_id = run_id
        self.root_run = root_run
        self.flush_every_s = flush_every_s
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        ts = int(time.time() * 1000)
        self._buffer += [Metric(metric_name(k), float(v), ts, step or 0) for k, v in metrics.items()]
        if time.monotonic() - self._last_flush > self.flush_every_s or len(self._buffer) >= 900:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:900], self._buffer[900:]
            self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)
        self._last_flush = time.monotonic()

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def log_file(self, name: str, data: bytes) -> None:
        """A document (PNG, Markdown, JSON) attached to this step's own run."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path))

    def map_batches(self, stage_fns, x, **options):
        from pipelines.scale.batch import map_batches

        return map_batches(stage_fns, x, **options)

    def map_files(self, stage_fns, path, **options):
        from pipelines.scale.files import map_files

        return map_files(stage_fns, path, **options)

    def train_workers(self, loop_fn, config, **options):
        from pipelines.scale.train import train_workers

        return train_workers(loop_fn, config, name=self.run_id, **options)

    def save_output(self, value) -> bool:
        """Store the output under ``output/``; its ``publish`` part (if any) separately under
        ``publish/``, so the engine can publish it without loading the whole output. Returns
        whether there was something to publish. ``stored=true`` is set last: a run without it is
        never trusted by a cache lookup. ``slimray.key_id`` names the key that signed it, so a
        lookup by a driver with another key skips it without downloading anything."""
        pub = getattr(value, "publish", None)
        key = self._key_of(self.run_id)
        if pub is not None:
            value = dataclasses.replace(value, publish=None)
            with tempfile.TemporaryDirectory() as tmp:
                artifacts.save(pub, tmp, artifacts.entry_context(self.run_id, key, PUBLISH_DIR))
                self.client.log_artifacts(self.run_id, tmp, PUBLISH_DIR)
        with tempfile.TemporaryDirectory() as tmp:
            artifacts.save(value, tmp, artifacts.entry_context(self.run_id, key, OUTPUT_DIR))
            self.client.log_artifacts(self.run_id, tmp, OUTPUT_DIR)
        done = {artifacts.KEY_ID_TAG: signing.key_id(), f"{TAG}stored": "true"}
        self.set_tags({**done, **({f"{TAG}publishes": "true"} if pub is not None else {})})
        return pub is not None

    def _key_of(self, run_id: str) -> str:
        return self.client.get_run(run_id).data.tags.get(f"{TAG}cache_key", "")

    def load_output(self, run_id: str):
        return load_output(self.client, run_id)

    def finish(self, status: str) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status)
