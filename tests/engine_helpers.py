"""Run pipelines in-process through the same path as the CLI (compose -> validate -> execute)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.cli import main
from pipelines.config.compose import load_config
from pipelines.run import session


def run_pipeline(workdir, overrides=(), pipeline: dict | None = None):
    cfg = load_config(["pipeline=demo", f"tracking.uri=sqlite:///{workdir}/mlflow.db", *overrides])
    if pipeline is not None:
        cfg.pipeline = OmegaConf.create(pipeline)
    spec, ray_cfg, tracking = session.validate(cfg)
    return session.execute(cfg, spec, ray_cfg, tracking, list(overrides))


def child_runs(outcome, parent: str | None = None):
    client = MlflowClient(tracking_uri=outcome.uri)
    return client.search_runs(
        [outcome.experiment_id],
        max_results=1000,
        filter_string=f"tags.`mlflow.parentRunId` = '{parent or outcome.run_id}'",
    )


def all_runs(outcome):
    client = MlflowClient(tracking_uri=outcome.uri)
    return client.search_runs(
        [outcome.experiment_id], max_results=1000, filter_string=f"tags.`slimray.root` = '{outcome.run_id}'"
    )


def assert_config_error(argv: list[str], expected: str | list[str], workdir, capsys) -> None:
    """``slimray argv`` is a config error: exit 2, one ``error:`` line holding every expected part,
    no MLflow store written and Ray's state untouched."""
    import ray

    was_running = ray.is_initialized()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    for part in [expected] if isinstance(expected, str) else expected:
        assert part in err, err
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()
    assert ray.is_initialized() == was_running


def demo_runs(uri: str, experiment: str = "demo") -> list:
    """Every run of ``experiment`` in the store at ``uri`` ([] before the experiment exists)."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def interrupt_when_running(
    args: list[str],
    workdir: Path,
    uri: str,
    ray_address: str | None,
    hangs: int = 1,
    step: str = "hang",
    experiment: str = "demo",
    wait_s: float = 120,
):
    """Start ``slimray args`` (on the running Ray at ``ray_address``; None: the driver starts its
    own), wait until ``hangs`` runs of ``step`` are RUNNING in ``experiment``, send Ctrl-C
    (SIGINT) and time the exit. The driver (and, in its own session, the Ray it started) is
    killed on the way out if still alive. Returns (exit code, seconds from SIGINT to exit, the
    driver's stderr)."""
    cmd = [sys.executable, "-m", "pipelines", *args, f"tracking.uri={uri}"]
    cmd += [f"ray.address={ray_address}"] if ray_address else []
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    # stderr to a file, never an unread pipe: a driver writing into a full pipe blocks, and
    # would look exactly like a driver that ignores Ctrl-C
    log_path = workdir / "driver.log"
    with open(log_path, "wb") as log:
        driver = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
        try:
            deadline = time.time() + wait_s
            running = 0
            while running < hangs:
                assert driver.poll() is None, log_path.read_text(errors="replace")[-2000:]
                assert time.time() < deadline, f"{running}/{hangs} '{step}' steps started"
                time.sleep(0.2)
                runs = demo_runs(uri, experiment)
                running = sum(r.data.tags.get("slimray.step") == step and r.info.status == "RUNNING" for r in runs)
            driver.send_signal(signal.SIGINT)
            t0 = time.time()
            driver.wait(timeout=30)
            exit_s = time.time() - t0
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
            try:  # what the driver started in its session (its own Ray), should it have left any
                os.killpg(driver.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return driver.returncode, exit_s, log_path.read_text(errors="replace")


def selected_benchmark(workdir, overrides: list[str]):
    """Run ``overrides`` (it must finish): the session's outcome and the benchmark step's ``BenchmarkReport``."""
    import json

    from mlflow.tracking import MlflowClient

    from pipelines.config.compose import load_config
    from pipelines.run import session
    from tasks.core.types import BenchmarkReport

    cfg = load_config(overrides)
    spec, ray_cfg, tracking = session.validate(cfg)
    out = session.execute(cfg, spec, ray_cfg, tracking, overrides)
    assert out.exit_code == 0, {n: (s.status, s.note) for n, s in out.states.items()}
    st = out.states["benchmark"]
    client = MlflowClient(tracking_uri=out.uri)
    path = client.download_artifacts(st.trials[st.selected].meta.run_id, "benchmark.json", str(workdir / "dl"))
    with open(path) as f:
        return out, BenchmarkReport.from_dict(json.load(f))
