"""The "your own model" target: a user-style model (BatchNorm + residual + GELU + depthwise conv,
its own constructor names) and its ``.npz`` through ``experiment=byo`` end to end, channel pruning
included; the selected model's throughput and test accuracy against the user's checkpoint.
Prints one JSON object. Target: selected >= 5x the teacher's throughput at <= 1 point accuracy loss.

    .venv/bin/python benchmarks/byo.py [--prepared DIR] [overrides...]

Without ``--prepared`` it first runs ``python -m examples.byo.prepare`` (the user's own training
script) into the temporary directory; with it, it reuses ``DIR/{data.npz,model.safetensors}``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import launch  # benchmarks/ is the script's directory
from default_run import benchmark_json
from machine import machine_info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", type=Path, default=None)
    args, overrides = p.parse_known_args()
    load_before = os.getloadavg()
    with launch.fresh_dir("slimray-byo-") as wd:
        mine = args.prepared.resolve() if args.prepared else wd / "mine"
        prepare = ["-m", "examples.byo.prepare", "--out", str(mine)]
        prepare_s = None if args.prepared else launch.python(prepare, launch.ROOT).check().seconds
        paths = [
            f"data.path={mine / 'data.npz'}",
            f"pipeline.steps.teacher.params.weights_path={mine / 'model.safetensors'}",
        ]
        done = launch.slimray(["experiment=byo", *paths, *overrides], wd).check()
        wall, bench = done.seconds, benchmark_json(done.store)
    t = bench["targets"]
    sel = t["selected_vs_teacher"] or {}
    rows = {r["name"]: r for r in bench["candidates"]}
    speedup, delta = sel.get("throughput_speedup"), sel.get("test_acc_delta")
    print(
        json.dumps(
            {
                **machine_info(threads=bench.get("threads")),
                "load_avg_before": [round(x, 2) for x in load_before],
                "load_avg_after": [round(x, 2) for x in os.getloadavg()],
                "overrides": overrides,
                "prepare_s": None if prepare_s is None else round(prepare_s, 1),
                "pipeline_wall_s": round(wall, 1),
                "teacher_test_acc": rows[t["teacher"]]["test_acc"],
                "teacher_test_acc_ci95": rows[t["teacher"]].get("test_acc_ci95"),
                "teacher_params": rows[t["teacher"]].get("params"),
                "teacher_throughput": rows[t["teacher"]].get("throughput_b256"),
                "selected": t["selected"],
                "selected_test_acc": rows[t["selected"]]["test_acc"],
                "selected_test_acc_ci95": rows[t["selected"]].get("test_acc_ci95"),
                "selected_params": rows[t["selected"]].get("params"),
                "selected_throughput": rows[t["selected"]].get("throughput_b256"),
                "test_acc_delta_points": None if delta is None else round(100 * delta, 2),
                "test_acc_delta_points_ci95": [100 * x for x in sel.get("test_acc_delta_ci95") or []] or None,
                "test_acc_delta_p": sel.get("test_acc_delta_p"),
                "throughput_speedup": speedup,
                "size_reduction": sel.get("size_reduction"),
                "candidates": {
                    n: {k: r[k] for k in ("kind", "test_acc", "val_acc", "throughput_b256", "params")}
                    for n, r in rows.items()
                },
                "target_met": bool(speedup is not None and speedup >= 5.0 and delta is not None and delta >= -0.01),
            }
        )
    )


if __name__ == "__main__":
    main()
