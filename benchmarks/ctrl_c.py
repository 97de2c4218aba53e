"""Ctrl-C reliability of the three drivers: start `slimray` in a fresh directory, send SIGINT once
a step (or a search trial's first step) runs, and measure how long the driver takes to exit, its
exit code, and whether any MLflow run is left RUNNING. Each driver starts its own Ray, as a user's
`slimray` does. Repeats N times per mode; prints one JSON object.

- ``single``: `slimray pipeline=demo` with a 120 s step and a CPU-burning step;
- ``multirun``: `slimray -m pipeline=demo seed=0,1` with the 120 s step in both executions;
- ``search``: `slimray experiment=search` at a small budget, interrupted in a trial's student_kd.

    .venv/bin/python benchmarks/ctrl_c.py [--runs 10] [--modes single,multirun,search] [--timeout 60]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
HANG = "+pipeline.steps.hang={task: toy_sleep, inputs: {x: source}, params: {seconds: 120.0}}"
BURN = "+pipeline.steps.burn={task: toy_sleep, inputs: {x: source}, params: {seconds: 120.0, busy: true}}"
SMALL_SEARCH = [
    "experiment=search",
    "+data.max_train=600",
    "data.n_transfer=300",
    "pipeline.steps.teacher.params.optim.epochs=1",
    "pipeline.steps.student_kd.params.optim.epochs=2",
    "pipeline.search.num_samples=4",
]
# mode -> (arguments, experiment, the step whose RUNNING runs trigger SIGINT, how many)
MODES = {
    "single": (["pipeline=demo", "ray.num_cpus=3", HANG, BURN], "demo", "hang", 1),
    "multirun": (["-m", "pipeline=demo", "ray.num_cpus=3", HANG, "seed=0,1"], "demo", "hang", 2),
    "search": (SMALL_SEARCH, "search", "student_kd", 1),
}


def _runs(uri: str, experiment: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def _running(uri: str, experiment: str, step: str) -> int:
    return sum(r.data.tags.get("slimray.step") == step and r.info.status == "RUNNING" for r in _runs(uri, experiment))


def once(mode: str, timeout: float) -> dict:
    args, experiment, step, count = MODES[mode]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SLIMRAY_TASKS": "tests.toy_tasks",  # the demo pipeline's toy steps and config
        "SLIMRAY_CONF": str(REPO / "tests" / "conf"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    with tempfile.TemporaryDirectory() as wd:
        uri = f"sqlite:///{wd}/mlflow.db"
        MlflowClient(tracking_uri=uri).search_experiments()  # create the store before the driver
        storage = [f"pipeline.search.storage={wd}/tune"] if mode == "search" else []  # Tune's, not ~/.cache
        cmd = [sys.executable, "-m", "pipelines", *args, f"tracking.uri={uri}", *storage]
        log = open(f"{wd}/stderr.log", "wb")  # a file, not a pipe: a full pipe would block the driver
        driver = subprocess.Popen(cmd, cwd=wd, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        try:
            deadline = time.time() + 600
            while _running(uri, experiment, step) < count:
                if driver.poll() is not None or time.time() > deadline:
                    return {"ok": False, "error": f"'{step}' never ran", "tail": open(f"{wd}/stderr.log").read()[-800:]}
                time.sleep(0.2)
            t0 = time.time()
            driver.send_signal(signal.SIGINT)
            try:
                driver.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return {"ok": False, "exit_s": None, "error": f"still running {timeout} s after SIGINT"}
            exit_s = time.time() - t0
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
            try:  # the Ray the driver started, should it have left any of it
                os.killpg(driver.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            log.close()
        err = open(f"{wd}/stderr.log", encoding="utf-8", errors="replace").read()
        running = [r.data.tags.get("mlflow.runName") for r in _runs(uri, experiment) if r.info.status == "RUNNING"]
        ok = driver.returncode == 130 and not running and exit_s <= 10
        out = {"ok": ok, "exit_s": round(exit_s, 2), "code": driver.returncode, "left_running": running}
        out["watchdog"] = "clean-up took over" in err  # exited by the watchdog, before its clean-up ended
        if ok:
            return out
        checks = [ln for ln in err.splitlines() if "Check failed" in ln or "Error" in ln][:5]
        return {**out, "stderr_errors": checks, "stderr_tail": err[-1500:]}


def summary(results: list[dict]) -> dict:
    return {
        "runs": len(results),
        "passed": sum(r["ok"] for r in results),
        "max_exit_s": max((r.get("exit_s") or 1e9) for r in results),
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--modes", default="single,multirun,search")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"unknown mode {sorted(unknown)[0]} (modes: {', '.join(MODES)})")
    out = {m: summary([once(m, args.timeout) for _ in range(args.runs)]) for m in modes}
    slowest = max(out[m]["max_exit_s"] for m in modes)
    print(json.dumps({**out, "max_exit_s": slowest, **machine_info()}))


if __name__ == "__main__":
    main()
