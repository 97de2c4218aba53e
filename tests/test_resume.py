"""SIGKILL the driver mid-pipeline, rerun: the finished steps are not recomputed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.engine_helpers import demo_runs, interrupt_when_running, run_pipeline

SLOW = "+pipeline.steps.slow={task: toy_sleep, inputs: {x: join}, params: {seconds: 4.0}}"


def _finished_steps(uri: str) -> set[str]:
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("demo")
        if exp is None:
            return set()
        runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'")
        return {r.data.tags.get("slimray.step") for r in runs}
    except Exception:  # the store may not exist yet
        return set()


@pytest.mark.slow
def test_sigkill_driver_then_resume(workdir, ray_local):
    uri = f"sqlite:///{workdir}/mlflow.db"
    address = ray_local.get_runtime_context().gcs_address
    MlflowClient(tracking_uri=uri).search_experiments()  # create the store before two processes race to
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    cmd = [sys.executable, "-m", "pipelines", "pipeline=demo", f"tracking.uri={uri}", f"ray.address={address}", SLOW]
    log = open(workdir / "driver.log", "wb")  # a file: an unread pipe fills up and blocks the driver
    driver = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.time() + 120
        while "join" not in _finished_steps(uri):
            assert driver.poll() is None, (workdir / "driver.log").read_text(errors="replace")[-2000:]
            assert time.time() < deadline, "the driver never finished 'join'"
            time.sleep(0.2)
        assert "slow" not in _finished_steps(uri)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        log.close()
    assert driver.returncode == -signal.SIGKILL

    out = run_pipeline(workdir, [SLOW])
    assert out.exit_code == 0
    statuses = {n: st.status for n, st in out.states.items()}
    assert statuses == {
        "source": "cached",
        "left": "cached",
        "right": "cached",
        "sweep": "cached",
        "join": "cached",
        "slow": "done",
    }


@pytest.mark.slow
def test_ctrl_c_cancels_tasks_and_marks_runs_killed(workdir, ray_local):
    uri = f"sqlite:///{workdir}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()
    address = ray_local.get_runtime_context().gcs_address
    hang = "+pipeline.steps.hang={task: toy_sleep, inputs: {x: source}, params: {seconds: 120.0}}"
    burn = "+pipeline.steps.burn={task: toy_sleep, inputs: {x: source}, params: {seconds: 120.0, busy: true}}"
    code, exit_s, err = interrupt_when_running(["pipeline=demo", hang, burn], workdir, uri, address)
    assert code == 130, err[-2000:]
    assert exit_s <= 10, f"driver took {exit_s:.1f} s to exit after Ctrl-C"
    # a log, not a terminal: no colour codes, no Ray "[repeated Nx across cluster]" folding
    assert "\x1b[" not in err and "repeated" not in err, err[-2000:]
    assert "interrupted" in err
    runs = demo_runs(uri)
    hang_run = next(r for r in runs if r.data.tags.get("slimray.step") == "hang")
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert hang_run.info.status == "KILLED" and parent.info.status == "KILLED"
    assert not [r for r in runs if r.info.status == "RUNNING"]
