"""The default `slimray` run, timed: `python -m pipelines [overrides]` in an empty directory,
then the targets from the run's `benchmark.json`. Prints one JSON object.

    .venv/bin/python benchmarks/default_run.py [overrides...]     # e.g. experiment=smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import launch  # benchmarks/ is the script's directory
from machine import machine_info


def benchmark_json(uri: str) -> dict:
    """``benchmark.json`` of the newest execution's benchmark step."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`slimray.step` = 'benchmark'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise SystemExit("no benchmark step run found")
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(runs[0].info.run_id, "benchmark.json", tmp)).read_text())


def run_fresh(overrides: list[str], prefix: str = "slimray-default-") -> tuple[float, dict]:
    """(wall seconds, ``benchmark.json``) of ``python -m pipelines overrides`` in an empty
    directory: embedded Ray, a fresh sqlite MLflow store. A failed run exits with its stderr."""
    with launch.fresh_dir(prefix) as wd:
        done = launch.slimray(overrides, wd).check()
        return done.seconds, benchmark_json(done.store)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="slimray overrides, e.g. experiment=smoke")
    overrides = ap.parse_args().overrides
    wall, bench = run_fresh(overrides)
    t = bench["targets"]
    sel = t["selected_vs_teacher"] or {}
    rows = {r["name"]: r for r in bench["candidates"]}
    teacher = rows.get(t["teacher"] or "", {})
    int8 = max(t["int8_vs_fp32"], key=lambda c: c["throughput_speedup"] or 0, default={})
    print(
        json.dumps(
            {
                **machine_info(threads=bench.get("threads")),
                "overrides": overrides,
                "wall_s": round(wall, 1),
                "teacher_test_acc": teacher.get("test_acc"),
                "teacher_test_acc_ci95": teacher.get("test_acc_ci95"),  # Wilson, over the test rows
                "selected": t["selected"],
                "selected_test_acc": rows.get(t["selected"] or "", {}).get("test_acc"),
                "selected_test_acc_ci95": rows.get(t["selected"] or "", {}).get("test_acc_ci95"),
                "size_reduction": sel.get("size_reduction"),
                "throughput_speedup": sel.get("throughput_speedup"),
                "test_acc_delta": sel.get("test_acc_delta"),
                "test_acc_delta_ci95": sel.get("test_acc_delta_ci95"),  # paired (Agresti-Min) ...
                "test_acc_delta_p": sel.get("test_acc_delta_p"),  # ... and McNemar's p-value
                "int8_throughput_speedup": int8.get("throughput_speedup"),
                "int8_test_acc_delta": int8.get("test_acc_delta"),
                "int8_test_acc_delta_ci95": int8.get("test_acc_delta_ci95"),
                "int8_test_acc_delta_p": int8.get("test_acc_delta_p"),
            }
        )
    )


if __name__ == "__main__":
    main()
