"""The engine end to end on real Ray and a real MLflow sqlite store, with the toy tasks."""

from __future__ import annotations

import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipelines.store import artifacts
from tests.engine_helpers import all_runs, child_runs, run_pipeline

pytestmark = pytest.mark.usefixtures("ray_local")


def _statuses(outcome):
    return {n: st.status for n, st in outcome.states.items()}


def test_diamond_and_sweep_end_to_end(workdir, ray_local):
    out = run_pipeline(workdir)
    assert out.exit_code == 0
    assert set(_statuses(out).values()) == {"done"}
    sweep = out.states["sweep"]
    assert len(sweep.trials) == 6
    # score = (2 + amount) * scale; the constraint score <= left.score + 1.5 = 3.5 rules out 4
    assert sweep.trials[sweep.selected].label == "amount=1.0,scale=1.0"
    join = ray_local.get(out.states["join"].trials[0].output)
    # left (2) + right (3) + all six trials (2+3+4-2-3-4) + the selected trial (3)
    assert torch.equal(join.value, torch.full((4,), 8.0))

    client = MlflowClient(tracking_uri=out.uri)
    parent = client.get_run(out.run_id)
    assert parent.info.status == "FINISHED"
    assert "config.yaml" in {a.path for a in client.list_artifacts(out.run_id)}
    children = {r.info.run_name: r for r in child_runs(out)}
    assert set(children) == {"source", "left", "right", "sweep", "join"}
    trials = child_runs(out, children["sweep"].info.run_id)
    assert sorted(r.info.run_name for r in trials) == sorted(f"sweep[{t.label}]" for t in sweep.trials)
    for run in list(children.values()) + trials:
        for tag in (
            "slimray.step",
            "slimray.task",
            "slimray.cache_key",
            "slimray.cached",
            "slimray.node_id",
            "mlflow.source.git.commit",
        ):
            assert tag in run.data.tags, (run.info.run_name, tag)
        assert run.data.tags["slimray.cached"] == "false"
    assert children["sweep"].data.tags["slimray.selected"] == "amount=1.0,scale=1.0"
    # per-step metrics with step numbers, and the output stored with safe codecs
    history = client.get_metric_history(children["left"].info.run_id, "progress")
    assert [m.step for m in history] == [0, 1, 2]
    local = client.download_artifacts(children["join"].info.run_id, "output", str(workdir / "dl"))
    assert torch.equal(artifacts.load(local).value, join.value)


def test_independent_steps_run_concurrently(workdir):
    pipeline = {
        "name": "parallel",
        "steps": {
            "source": {"task": "toy_source"},
            "a": {"task": "toy_sleep", "inputs": {"x": "source"}, "params": {"seconds": 2.0}},
            "b": {"task": "toy_sleep", "inputs": {"x": "source"}, "params": {"seconds": 2.0}},
        },
    }
    run_pipeline(workdir, ["cache=false"], pipeline)  # warm the two workers
    out = run_pipeline(workdir, ["cache=false"], pipeline)
    a, b = out.states["a"], out.states["b"]
    assert out.exit_code == 0
    assert max(a.ended, b.ended) - min(a.started, b.started) < 3.5  # sequential would be >= 4 s


def test_cache_hit_partial_invalidation_and_disable(workdir):
    first = run_pipeline(workdir)
    assert first.exit_code == 0
    again = run_pipeline(workdir)
    assert set(_statuses(again).values()) == {"cached"}
    assert all(r.data.tags["slimray.cached"] == "true" for r in all_runs(again) if "slimray.cached" in r.data.tags)
    assert again.states["sweep"].trials[again.states["sweep"].selected].label == "amount=1.0,scale=1.0"

    changed = run_pipeline(workdir, ["pipeline.steps.right.params.amount=5.0"])
    assert _statuses(changed) == {
        "source": "cached",
        "left": "cached",
        "right": "done",
        "sweep": "cached",
        "join": "done",
    }
    value = ray_get(changed.states["join"].trials[0].output)
    assert torch.equal(value.value, torch.full((4,), 8.0 + 3.0))  # right went from 3 to 6

    off = run_pipeline(workdir, ["cache=false"])
    assert set(_statuses(off).values()) == {"done"}


def ray_get(ref):
    import ray

    return ray.get(ref)


def test_failed_step_skips_descendants_and_others_finish(workdir):
    pipeline = {
        "name": "failing",
        "steps": {
            "source": {"task": "toy_source"},
            "bad": {"task": "toy_fail", "inputs": {"x": "source"}, "retries": 1, "params": {"message": "boom\nsecond"}},
            "after_bad": {"task": "toy_add", "inputs": {"x": "bad"}},
            "good": {"task": "toy_add", "inputs": {"x": "source"}},
            "after_good": {"task": "toy_sleep", "inputs": {"x": "good"}, "params": {"seconds": 0.1}},
        },
    }
    out = run_pipeline(workdir, ["cache=false"], pipeline)
    assert out.exit_code == 1
    assert _statuses(out) == {
        "source": "done",
        "bad": "failed",
        "after_bad": "skipped",
        "good": "done",
        "after_good": "done",
    }
    assert out.states["bad"].note == "RuntimeError: boom"
    failed = [r for r in all_runs(out) if r.data.tags.get("slimray.step") == "bad"]
    assert len(failed) == 2 and {r.info.status for r in failed} == {"FAILED"}  # first try + 1 retry
    assert MlflowClient(tracking_uri=out.uri).get_run(out.run_id).info.status == "FAILED"


def test_step_no_node_can_hold_fails_at_once_naming_the_key(workdir):
    """3 CPUs on a 2-CPU Ray: Ray would queue the task forever (waiting for an autoscaler);
    the step fails before it is submitted, its descendants are skipped, the rest finishes."""
    pipeline = {
        "name": "too_big",
        "steps": {
            "source": {"task": "toy_source"},
            "big": {"task": "toy_add", "inputs": {"x": "source"}, "resources": {"num_cpus": 3, "custom": {"fast": 1}}},
            "after_big": {"task": "toy_add", "inputs": {"x": "big"}},
            "good": {"task": "toy_add", "inputs": {"x": "source"}},
        },
    }
    t0 = time.time()
    out = run_pipeline(workdir, ["cache=false"], pipeline)
    assert time.time() - t0 < 60
    assert out.exit_code == 1
    assert _statuses(out) == {"source": "done", "big": "failed", "after_big": "skipped", "good": "done"}
    note = out.states["big"].note
    assert note.startswith("pipeline.steps.big.resources: {CPU: 3, fast: 1} fits on no node of this Ray cluster")
    assert "(its 1 node(s): {CPU: 2, fast: 0})" in note and "\n" not in note
    assert not [r for r in all_runs(out) if r.data.tags.get("slimray.step") == "big"]  # it never ran


def test_unfit_compares_every_requested_resource_per_node():
    from pipelines.config.schema import ResourcesConfig
    from pipelines.run.fit import request, unfit

    nodes = [{"CPU": 1.0, "memory": 4e9, "node:127.0.0.1": 1.0}, {"CPU": 4.0, "GPU": 1.0, "memory": 8e9}]
    assert request(ResourcesConfig(num_cpus=2, memory=None)) == {"CPU": 2.0}
    assert unfit("s", ResourcesConfig(num_cpus=4, num_gpus=1), nodes) == ""  # the second node holds it
    assert unfit("s", ResourcesConfig(num_cpus=0.5, memory=6_000_000_000), nodes) == ""
    reason = unfit("s", ResourcesConfig(num_cpus=2, num_gpus=2), nodes)  # CPUs on one, GPUs on none
    assert reason.startswith("pipeline.steps.s.resources: {CPU: 2, GPU: 2} fits on no node")
    assert "(its 2 node(s): {CPU: 1, GPU: 0}, {CPU: 4, GPU: 1})" in reason
    assert "(its 0 node(s): none)" in unfit("s", ResourcesConfig(), [])


def test_sweep_respects_max_concurrency(workdir):
    pipeline = {
        "name": "bounded",
        "steps": {
            "source": {"task": "toy_source"},
            "s": {
                "task": "toy_sleep",
                "inputs": {"x": "source"},
                "max_concurrency": 1,
                "sweep": {"params.seconds": [0.5, 0.6, 0.7]},
            },
        },
    }
    start = time.time()
    out = run_pipeline(workdir, ["cache=false"], pipeline)
    assert out.exit_code == 0
    runs = child_runs(out, out.states["s"].run_id)
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert len(spans) == 3
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2)), spans  # never two at once
    assert time.time() - start > 1.8
