"""What runs inside a Ray task for one step (or one sweep trial).

It opens the step's MLflow run, either loads a cached output or calls the task with a
``StepContext`` whose tracker forwards to MLflow, stores the output as run artifacts, and
returns ``(output, StepMeta)``: the output stays in Ray's object store for downstream steps,
the small meta goes to the driver.

Before a task computes, the worker checks what its cache key read on the driver against its own
node (``check_facts``): the versions of the distributions the step's code reaches, the contents of
the files its params name, and for a measuring step the hardware fingerprint. A mismatch fails the
step in one line, so no output is stored under a key that does not describe how it was made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from pipelines.config.spec import build_config
from pipelines.store import signing
from pipelines.store.artifacts import mark_corrupt
from pipelines.store.lineage import record_output
from pipelines.store.manifest import ArtifactError
from pipelines.store.tracking import TAG, StepTracker, create_run, log_params
from tasks import task_table
from tasks.core.context import StepContext


@dataclass(frozen=True)
class Facts:
    """What a trial's cache key read on the driver, for the worker to check on its node."""

    libraries: dict[str, str]  # distribution (and "python") -> version
    files: dict[str, str]  # dotted param path -> content hash of the file or directory it names
    hardware: dict | None = None  # a measuring step: the fingerprint of the node it is placed on


class FactError(RuntimeError):
    """This node is not what the step's cache key says (hardware, a library, a file): one line."""


@dataclass
class StepJob:
    step: str
    task: str
    run_name: str  # "prune" or "prune[amount=0.5,method=channel]"
    params: dict
    seed: int
    uri: str
    experiment_id: str
    parent_run: str
    root_run: str
    tags: dict[str, str]
    layout: list[tuple[str, bool, int]]  # (task parameter, is list, number of positional args)
    cached_from: str | None = None  # run id holding the stored output of a cache hit
    cached_summary: dict[str, float] = field(default_factory=dict)
    cached_publishes: bool = False  # the cached run holds a Publication under publish/
    use_gpu: bool = False
    threads: int = 1
    trusted_targets: tuple[str, ...] = ()  # model _target_s a stored arch may name, beyond the zoo
    retries: int = 0  # the step's max_retries: > 0 means an earlier attempt may have died
    facts: Facts | None = None  # what the key holds that this node must match (check_facts)


@dataclass
class StepMeta:
    run_id: str
    node_id: str
    seconds: float
    summary: dict[str, float]
    cached: bool
    publishes: bool = False  # the step returned a Publication for the parent run


def assemble(layout: list[tuple[str, bool, int]], args: tuple) -> dict:
    """Positional Ray arguments back into the task's keyword inputs."""
    kwargs: dict = {}
    i = 0
    for param, is_list, n in layout:
        chunk = list(args[i : i + n])
        i += n
        kwargs[param] = kwargs.get(param, []) + chunk if is_list else chunk[0]
    return kwargs


def _setup_logs() -> None:
    # the ONNX exporter warns once per export about every torchvision op it cannot find
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    # ctx.progress() lines (rate-limited) reach the driver's console through Ray's log forwarding
    progress = logging.getLogger("slimray")
    if not progress.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
        progress.propagate = False


def fail_dead_attempts(client: MlflowClient, job: StepJob) -> None:
    """Retry rule: a Ray task retried after its worker process died leaves the dead attempt's
    MLflow run RUNNING forever. Within one pipeline execution (root run) a step or trial runs
    once at a time, so any RUNNING run with the same root, cache key and run name is such a
    dead attempt: mark it FAILED before the retry opens its own run. Only searched for steps
    that declare retries (one query), so plain steps pay nothing."""
    if job.retries <= 0:
        return
    runs = client.search_runs(
        [job.experiment_id],
        max_results=100,
        filter_string=(
            f"tags.`{TAG}root` = '{job.root_run}' and tags.`{TAG}cache_key` = '{job.tags[TAG + 'cache_key']}' "
            f"and attributes.run_name = '{job.run_name}' and attributes.status = 'RUNNING'"
        ),
    )
    for run in runs:
        client.set_tag(run.info.run_id, f"{TAG}error", "attempt lost: its Ray worker died; retried")
        client.set_terminated(run.info.run_id, "FAILED")


def _compact(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _fingerprint_side(fp: dict, other: dict) -> str:
    """One side of a fingerprint mismatch: its digest and the fields where it differs from ``other``."""
    differ = {k: fp[k] for k in sorted(fp) if fp[k] != other.get(k)}
    return f"fingerprint {hashlib.sha256(_compact(fp).encode()).hexdigest()[:12]} {_compact(differ)}"


def check_facts(job: StepJob, node: str) -> None:
    """Fail (``FactError``, one line) unless this node matches what the job's cache key read on the
    driver: the hardware fingerprint of a measuring step, the version of every distribution in the
    key, the content of every file a param names (hashed here again; remembered by path, so an
    unchanged file costs a stat)."""
    from pipelines.store.keys import FileHasher, file_hashes, library_versions
    from tasks.runtime.hardware import fingerprint

    facts = job.facts
    if facts is None:
        return
    where = f"step {job.run_name}: node {node}"
    if facts.hardware is not None and (node_fp := fingerprint()) != facts.hardware:
        raise FactError(
            f"{where} has hardware {_fingerprint_side(node_fp, facts.hardware)} but the cache key holds "
            f"{_fingerprint_side(facts.hardware, node_fp)}; a measurement is stored only under its hardware"
        )
    versions = library_versions()
    for dist, keyed in sorted(facts.libraries.items()):
        here = versions.get(dist, "absent")
        if here != keyed:
            raise FactError(
                f"{where} has {dist} {here} but the cache key (the driver's) holds {dist} {keyed}; "
                "install the same versions on the driver and every node"
            )
    hasher = FileHasher()
    files = file_hashes(job.params, hasher)
    hasher.save()
    for param in sorted(set(files) | set(facts.files)):
        keyed, here = facts.files.get(param, "absent"), files.get(param, "absent")
        if here != keyed:
            raise FactError(
                f"{where}: params.{param} names a file whose content hash here is {here[:12]} but "
                f"{keyed[:12]} on the driver, where the cache key was computed; give every node the same files"
            )


def _run_task(job: StepJob, args: tuple, client: MlflowClient, run_id: str, tracker: StepTracker):
    import torch

    from tasks.runtime.hardware import keyed_on

    check_facts(job, signing.node())
    log_params(client, run_id, job.params)
    device = "cuda" if job.use_gpu and torch.cuda.is_available() else "cpu"
    torch.set_num_threads(job.threads)  # as many intra-op threads as CPUs the step declared
    ctx = StepContext(
        step=job.run_name, seed=job.seed, device=device, tracker=tracker, trusted_targets=job.trusted_targets
    )
    task: Callable[..., Any] = task_table()[job.task]
    with keyed_on(job.facts.hardware if job.facts else None):  # reduce_range: auto reads the key's CPU
        output = task(**assemble(job.layout, args), cfg=build_config(job.task, job.params), ctx=ctx)
    publishes = tracker.save_output(output)
    record_output(client, run_id, output, job.params)  # a Dataset becomes an MLflow dataset (store.lineage)
    return output, dict(ctx.summary), publishes


def _load_cached(job: StepJob, args: tuple, client: MlflowClient, run_id: str, tracker: StepTracker):
    """Load a cache hit. A stored output that fails its checks (truncated, corrupt) is untagged
    (``slimray.stored=corrupt``) so no later lookup trusts it, then recomputed when this task
    has its inputs; when it does not (its upstream was a cache hit nobody loaded), the step
    fails with the one-line error and the next run recomputes it."""
    assert job.cached_from is not None
    try:
        return tracker.load_output(job.cached_from), dict(job.cached_summary), True, job.cached_publishes
    except ArtifactError as e:
        if not mark_corrupt(client, job.cached_from, e):
            raise  # signed with another key: this node's configuration, not the entry (nothing tagged)
        if any(a is None for a in args):
            raise ArtifactError(e.origin, e.file, e.reason + "; untagged, rerun to recompute") from None
        tracker.set_tags({f"{TAG}cached": "false", f"{TAG}recomputed": str(e)[:500]})
        output, summary, publishes = _run_task(job, args, client, run_id, tracker)
        return output, summary, False, publishes


def execute(job: StepJob, *args):
    import ray

    _setup_logs()
    node_id = ray.get_runtime_context().get_node_id()
    client = MlflowClient(tracking_uri=job.uri)
    fail_dead_attempts(client, job)
    tags = {**job.tags, "slimray.node_id": node_id, "slimray.cached": str(job.cached_from is not None).lower()}
    run_id = create_run(client, job.experiment_id, job.run_name, job.parent_run, tags)
    tracker = StepTracker(client, run_id, job.root_run)
    start = time.time()
    try:
        if job.cached_from:
            output, summary, cached, publishes = _load_cached(job, args, client, run_id, tracker)
            if cached:
                tracker.log_metrics(summary)
        else:
            output, summary, publishes = _run_task(job, args, client, run_id, tracker)
            cached = False
        tracker.finish("FINISHED")
    except BaseException as e:
        tracker.set_tags({"slimray.error": f"{type(e).__name__}: {e}"[:500]})
        tracker.finish("FAILED")
        raise
    if getattr(output, "publish", None) is not None:  # published by the engine, not passed downstream
        output = dataclasses.replace(output, publish=None)
    return output, StepMeta(run_id, node_id, time.time() - start, summary, cached, publishes)
