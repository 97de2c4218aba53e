"""Faults a cluster really has, each on real Ray and a real MLflow store:

- a Ray worker process SIGKILLed mid-step (``retries: 1``): retried, the dead attempt's run FAILED;
- a worker node removed mid-sweep: its trials rescheduled, every trial finishes exactly once;
- the driver SIGKILLed mid-sweep: the rerun recomputes no finished trial;
- the MLflow server and then PostgreSQL restarted mid-step: every metric value arrives;
- a 32-trial sweep logging concurrently to one MLflow server on PostgreSQL: every value arrives.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.config.compose import load_config
from pipelines.run import session
from tests.engine_helpers import all_runs, run_pipeline
from tests.servers import MlflowServer, Postgres, private_dir

GiB = 1024**3


def _run(uri: str, pipeline: dict):
    cfg = load_config(["pipeline=demo", f"tracking.uri={uri}"])
    cfg.pipeline = OmegaConf.create(pipeline)
    spec, ray_cfg, tracking = session.validate(cfg)
    return session.execute(cfg, spec, ray_cfg, tracking, [])


def _pids_running(title: str) -> list[int]:
    """Ray names a worker process after the task it runs (``ray::<task name>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(f"ray::{title}".encode()):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _runs_of(uri: str, experiment: str, step: str) -> list:
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        return (
            []
            if exp is None
            else client.search_runs([exp.experiment_id], f"tags.`slimray.step` = '{step}'", max_results=500)
        )
    except Exception:  # the store may not exist yet
        return []


def _in_background(fn):
    errors: list[BaseException] = []

    def target():
        try:
            fn()
        except BaseException as e:  # surfaced by the test after join
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_worker_process_sigkilled_mid_step_is_retried(workdir, ray_local):
    killed: list[int] = []
    uri = f"sqlite:///{workdir}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()

    def kill_once():  # once the attempt's MLflow run is open, mid-step
        deadline = time.time() + 120
        while not killed and time.time() < deadline:
            if not [r for r in _runs_of(uri, "retry", "slow") if r.info.status == "RUNNING"]:
                time.sleep(0.1)
                continue
            for pid in _pids_running("slimray:slow"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.1)

    thread, errors = _in_background(kill_once)
    out = run_pipeline(
        workdir,
        pipeline={
            "name": "retry",
            "steps": {
                "source": {"task": "toy_source"},
                "slow": {"task": "toy_sleep", "inputs": {"x": "source"}, "params": {"seconds": 3.0}, "retries": 1},
                "after": {"task": "toy_add", "inputs": {"x": "slow"}, "params": {"amount": 1.0}},
            },
        },
    )
    thread.join(timeout=10)
    assert not errors and killed, errors
    assert out.exit_code == 0 and {st.status for st in out.states.values()} == {"done"}
    slow = sorted((r for r in all_runs(out) if r.data.tags["slimray.step"] == "slow"), key=lambda r: r.info.start_time)
    assert [r.info.status for r in slow] == ["FAILED", "FINISHED"]
    assert "worker died" in slow[0].data.tags["slimray.error"]
    assert "slimray.stored" not in slow[0].data.tags  # nothing of the dead attempt is kept or used
    assert out.states["after"].trials[0].meta.summary["score"] == 2.0
    assert not [r for r in all_runs(out) if r.info.status == "RUNNING"]


SWEEP = "+pipeline.steps.nap={task: toy_sleep, inputs: {x: source}, sweep: {params.seconds: [0.1, 0.2, 12.0]}}"


def _trial_runs(uri: str) -> list:
    return _trial_runs_of(uri, "nap")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_driver_sigkilled_mid_sweep_rerun_recomputes_no_finished_trial(workdir, ray_local):
    uri = f"sqlite:///{workdir}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()
    address = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "pipelines", "pipeline=demo", f"tracking.uri={uri}", f"ray.address={address}", SWEEP]
    log = open(workdir / "driver.log", "wb")  # a file: an unread pipe fills up and blocks the driver
    driver = subprocess.Popen(
        cmd,
        cwd=workdir,
        env={**os.environ, "RAY_AUTH_MODE": "token"},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.time() + 150
        while sum(r.info.status == "FINISHED" for r in _trial_runs(uri)) < 2:
            assert driver.poll() is None, (workdir / "driver.log").read_text(errors="replace")[-2000:]
            assert time.time() < deadline, "two trials never finished"
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        log.close()
    finished = {r.data.tags["slimray.trial"]: r.info.run_id for r in _trial_runs(uri) if r.info.status == "FINISHED"}
    assert set(finished) == {"seconds=0.1", "seconds=0.2"}
    out = run_pipeline(workdir, [SWEEP])
    assert out.exit_code == 0
    trials = {t.label: t for t in out.states["nap"].trials}
    assert trials["seconds=0.1"].status == trials["seconds=0.2"].status == "cached"
    assert trials["seconds=12.0"].status == "done"
    rerun = {
        r.data.tags["slimray.trial"]: r
        for r in all_runs(out)
        if r.data.tags.get("slimray.step") == "nap" and "slimray.trial" in r.data.tags
    }
    for label, run_id in finished.items():
        assert rerun[label].data.tags["slimray.cache_source"] == run_id


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(420)
def test_worker_node_removed_mid_sweep(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()
    if ray.is_initialized():
        ray.shutdown()
    args = dict(num_cpus=1, memory=2 * GiB, object_store_memory=200 * 1024**2)
    cluster = Cluster(initialize_head=True, head_node_args=args)
    try:
        victim = cluster.add_node(**args)
        cluster.add_node(**args)
        cluster.wait_for_nodes(timeout=90)
        ray.init(address=cluster.address, logging_level="WARNING")
        removed: list[str] = []

        def remove_victim():
            deadline = time.time() + 180
            while time.time() < deadline:
                runs = [
                    r
                    for r in _trial_runs_of(uri, "naps")
                    if r.info.status == "RUNNING" and r.data.tags.get("slimray.node_id") == victim.node_id
                ]
                if runs:
                    cluster.remove_node(victim)
                    removed.append(runs[0].data.tags["slimray.trial"])
                    return
                time.sleep(0.1)

        thread, errors = _in_background(remove_victim)
        out = _run(
            uri,
            {
                "name": "demo",
                "steps": {
                    "source": {"task": "toy_source"},
                    "naps": {
                        "task": "toy_sleep",
                        "inputs": {"x": "source"},
                        "retries": 2,
                        "sweep": {"params.seconds": [3.0, 3.1, 3.2, 3.3, 3.4, 3.5]},
                    },
                },
            },
        )
        thread.join(timeout=30)
        assert not errors and removed, errors
        assert out.exit_code == 0
        runs = _trial_runs_of(uri, "naps")
        finished = [r.data.tags["slimray.trial"] for r in runs if r.info.status == "FINISHED"]
        assert sorted(finished) == sorted(t.label for t in out.states["naps"].trials)  # all, exactly once
        lost = [r for r in runs if r.info.status == "FAILED"]
        assert lost and all("worker died" in r.data.tags["slimray.error"] for r in lost)
        assert all(r.data.tags["slimray.node_id"] == victim.node_id for r in lost)
        assert not [r for r in runs if r.info.status == "RUNNING"]
        assert victim.node_id not in {
            r.data.tags["slimray.node_id"]
            for r in runs
            if r.info.status == "FINISHED"
            and r.data.tags["slimray.trial"] in {x.data.tags["slimray.trial"] for x in lost}
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


def _trial_runs_of(uri: str, step: str) -> list:
    return [r for r in _runs_of(uri, "demo", step) if "slimray.trial" in r.data.tags]


@pytest.fixture(scope="module")
def mlflow_on_postgres():
    root = private_dir("slimray-pg-")
    pg = Postgres(root)
    pg.start()
    server = None
    try:
        server = MlflowServer(root, pg.create_db("mlflow"))
        server.start()
        yield pg, server
    finally:
        if server is not None:
            server.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def _ticks(uri: str, run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, "tick"))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_mlflow_then_postgres_restarted_mid_step_loses_no_metric(tmp_path, monkeypatch, ray_local, mlflow_on_postgres):
    pg, server = mlflow_on_postgres
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    started = threading.Event()

    def restarts():
        client = MlflowClient(tracking_uri=server.url)
        deadline = time.time() + 120
        while time.time() < deadline and not started.is_set():
            exp = client.get_experiment_by_name("restarts")
            if exp and client.search_runs([exp.experiment_id], "tags.`slimray.step` = 'log'"):
                started.set()
            time.sleep(0.3)
        time.sleep(2)
        server.stop()  # the tracking server goes away mid-step...
        time.sleep(3)
        server.start()  # ...and comes back on the same port
        time.sleep(3)
        pg.stop()  # then its database
        time.sleep(3)
        pg.start()

    thread, errors = _in_background(restarts)
    count = 400
    out = _run(
        server.url,
        {
            "name": "restarts",
            "steps": {
                "source": {"task": "toy_source"},
                "log": {"task": "toy_log", "inputs": {"x": "source"}, "params": {"count": count, "every": 0.08}},
            },
        },
    )
    thread.join(timeout=120)
    assert not errors and started.is_set(), errors
    assert out.exit_code == 0, {n: st.note for n, st in out.states.items()}
    run_id = out.states["log"].trials[0].meta.run_id
    assert _ticks(server.url, run_id) == list(range(count))  # every value, none twice
    assert MlflowClient(tracking_uri=server.url).get_run(out.run_id).info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_32_trial_sweep_logging_concurrently_to_postgres(tmp_path, monkeypatch, ray_local, mlflow_on_postgres):
    _, server = mlflow_on_postgres
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    counts, everies = [20, 21, 22, 23], [0.0, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007]
    out = _run(
        server.url,
        {
            "name": "concurrent",
            "steps": {
                "source": {"task": "toy_source"},
                "fan": {
                    "task": "toy_log",
                    "inputs": {"x": "source"},
                    "sweep": {"params.count": counts, "params.every": everies},
                },
            },
        },
    )
    assert out.exit_code == 0
    trials = out.states["fan"].trials
    assert len(trials) == 32 and {t.status for t in trials} == {"done"}
    total = 0
    for t in trials:
        ticks = _ticks(server.url, t.meta.run_id)
        assert ticks == list(range(int(t.params["count"]))), t.label
        total += len(ticks)
    assert total == sum(counts) * len(everies)
    runs = all_runs(out)
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 1 + 1 + 32
