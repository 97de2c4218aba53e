"""Ctrl-C reliability: start `slimray pipeline=demo` with a 120 s step and a CPU-burning step,
send SIGINT once the long step runs, and measure how long the driver takes to exit, its exit
code, and whether any MLflow run is left RUNNING. Repeats N times; prints one JSON object.

    .venv/bin/python benchmarks/ctrl_c.py [--runs 10] [--timeout 60]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time

from machine import machine_info
from mlflow.tracking import MlflowClient

STEPS = (
    "+pipeline.steps.hang={task: toy_sleep, inputs: {x: source}, params: {seconds: 120.0}}",
    "+pipeline.steps.burn={task: toy_sleep, inputs: {x: source}, params: {seconds: 120.0, busy: true}}",
)


def _runs(uri: str):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("demo")
    return [] if exp is None else client.search_runs([exp.experiment_id])


def once(timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as wd:
        uri = f"sqlite:///{wd}/mlflow.db"
        MlflowClient(tracking_uri=uri).search_experiments()  # create the store before the driver
        cmd = [sys.executable, "-m", "pipelines", "pipeline=demo", f"tracking.uri={uri}", "ray.num_cpus=3", *STEPS]
        log = open(f"{wd}/stderr.log", "wb")  # a file, not a pipe: a full pipe would block the driver
        driver = subprocess.Popen(cmd, cwd=wd, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.time() + 180
            while not any(r.data.tags.get("slimray.step") == "hang" and r.info.status == "RUNNING" for r in _runs(uri)):
                if driver.poll() is not None or time.time() > deadline:
                    return {"ok": False, "error": "the long step never started"}
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
            log.close()
        err = open(f"{wd}/stderr.log", encoding="utf-8", errors="replace").read()
        running = [r.data.tags.get("mlflow.runName") for r in _runs(uri) if r.info.status == "RUNNING"]
        ok = driver.returncode == 130 and not running and exit_s <= 10
        out = {"ok": ok, "exit_s": round(exit_s, 2), "code": driver.returncode, "left_running": running}
        if ok:
            return out
        checks = [ln for ln in err.splitlines() if "Check failed" in ln or "Error" in ln][:5]
        return {**out, "stderr_errors": checks, "stderr_tail": err[-1500:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    results = [once(args.timeout) for _ in range(args.runs)]
    print(
        json.dumps(
            {
                "runs": args.runs,
                "passed": sum(r["ok"] for r in results),
                "max_exit_s": max((r.get("exit_s") or 1e9) for r in results),
                **machine_info(),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
