"""The run lifecycle (``pipelines.run.lifecycle``) on real MLflow and real Ray: the Ctrl-C
handler is installed, runs still open under a tracked run are ended at any depth, a tracked run
ends with its status (KILLED after Ctrl-C), a joined Ray is left running; and Ctrl-C of a search
through the CLI (the single run's and the multirun's: tests/test_resume.py, tests/test_multirun.py)."""

from __future__ import annotations

import signal

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config.schema import RayConfig
from pipelines.run.interrupt import INTERRUPT
from pipelines.run.lifecycle import Lifecycle
from pipelines.store.tracking import create_run, ensure_experiment
from tests.engine_helpers import demo_runs, interrupt_when_running
from tests.test_search import small


@pytest.fixture
def store(workdir):
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    return client, ensure_experiment(client, "lifecycle")


@pytest.fixture
def sigint():
    """The test's own SIGINT handler back afterwards (the lifecycle takes SIGINT over)."""
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)
    INTERRUPT._installed = False


def _tree(client, exp):
    """root <- trial (slimray.root: root) <- step (slimray.root: trial), all RUNNING."""
    root = create_run(client, exp, "root", None, {})
    trial = create_run(client, exp, "trial", root, {"slimray.root": root})
    step = create_run(client, exp, "step", trial, {"slimray.root": trial})
    return root, trial, step


def _status(client, *run_ids):
    return [client.get_run(r).info.status for r in run_ids]


def test_ctrl_c_marks_every_open_run_killed_and_leaves_a_joined_ray(store, ray_local, sigint):
    client, exp = store
    root, trial, step = _tree(client, exp)
    with pytest.raises(KeyboardInterrupt):
        with Lifecycle(RayConfig()) as life:
            assert signal.getsignal(signal.SIGINT) == INTERRUPT._handler
            run = life.track(client, exp, root)
            life.start_ray()
            assert life.ray_up and not life.started_ray and not life.owns_ray  # joined, not started
            run.status = "FINISHED"
            raise KeyboardInterrupt
    assert _status(client, root, trial, step) == ["KILLED"] * 3
    assert client.get_run(root).data.tags["slimray.status"] == "killed"
    assert ray_local.is_initialized()


def test_end_runs_kills_the_tracked_runs_at_once_before_tasks_are_cancelled(store, sigint):
    """What a joined Ray's executor calls before ``ray.cancel`` (which can abort the driver): the
    runs are KILLED while the driver is still inside the lifecycle, once per Ctrl-C."""
    client, exp = store
    root, trial, step = _tree(client, exp)
    with pytest.raises(KeyboardInterrupt):
        with Lifecycle(RayConfig()) as life:
            life.track(client, exp, root)
            life.end_runs()
            assert _status(client, root, trial, step) == ["KILLED"] * 3
            late = create_run(client, exp, "late", root, {"slimray.root": root})  # a task just starting
            life.end_runs()  # a second executor's cancel: nothing to do
            assert _status(client, late) == ["RUNNING"]
            raise KeyboardInterrupt
    assert _status(client, late) == ["KILLED"]  # the way out ends it


def test_runs_end_with_their_status_and_a_closed_run_is_not_touched_again(store, sigint):
    client, exp = store
    first, first_trial, first_step = _tree(client, exp)
    second, second_trial, second_step = _tree(client, exp)
    with Lifecycle(RayConfig()) as life:
        done = life.track(client, exp, first)
        for finished in (first_step, first_trial):
            client.set_terminated(finished, "FINISHED")
        life.close(done, "FINISHED")  # a multirun's execution that ended while others go on
        assert life.runs == [] and not life.ray_up  # Ray only when something must run
        assert life.node_id().startswith("driver:")
        life.track(client, exp, second)  # failed: the work under it never said FINISHED
    assert _status(client, first, first_trial) == ["FINISHED", "FINISHED"]
    assert _status(client, second, second_trial, second_step) == ["FAILED"] * 3


@pytest.mark.slow
def test_ctrl_c_of_a_search_exits_130_with_no_running_run(workdir):
    """Ctrl-C once a trial's first step runs: the search (its own Ray, as `slimray` starts it)
    stops within 10 s with exit 130, and no run of the search is left RUNNING."""
    uri = f"sqlite:///{workdir}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()  # the store exists before the driver's workers log
    overrides = [o for o in small(workdir) if not o.startswith("tracking.uri=")]
    code, exit_s, err = interrupt_when_running(
        overrides, workdir, uri, None, step="student_kd", experiment="search", wait_s=480
    )
    assert code == 130, err[-3000:]
    assert exit_s <= 10, f"driver took {exit_s:.1f} s to exit after Ctrl-C"
    assert "interrupted: Ray tasks cancelled" in err and "clean-up took over" not in err, err[
        -3000:
    ]  # not the watchdog
    runs = demo_runs(uri, "search")
    assert not [(r.info.run_name, r.data.tags.get("slimray.step")) for r in runs if r.info.status == "RUNNING"]
    root = next(r for r in runs if "slimray.search_key" in r.data.tags)
    assert root.info.status == "KILLED" and root.data.tags["slimray.status"] == "killed"
    trials = [r for r in runs if r.data.tags.get("slimray.step") == "search"]
    assert trials and any(t.info.status == "KILLED" for t in trials)
