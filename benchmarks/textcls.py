"""A fine-tuned text classifier compressed by `slimray experiment=textcls`, measured side by side in one run.

Runs the pipeline in an empty directory (embedded Ray, a fresh sqlite MLflow store), reads the
benchmark step's `benchmark.json` and the data step's test-set size, and prints one JSON object:
every variant (torch FP32 of the fine-tuned teacher - the reference - included) with its runtime,
size, batch-1 latency and batch-32 throughput at 2 threads (and 1 thread), test accuracy with its
95% interval (Wilson), and whether it was selected or rejected; then the selected model against
the reference and against the plain-script anchor (ORT dynamic INT8 of the teacher, `int8_dynamic`).

    .venv/bin/python benchmarks/textcls.py [overrides...]            # the full size (needs the nlp extra)
    .venv/bin/python benchmarks/textcls.py --tiny                    # experiment=textcls_tiny (a smoke run)
    .venv/bin/python benchmarks/textcls.py pipeline.steps.benchmark.params.runtimes=[onnxruntime,openvino]
"""

from __future__ import annotations

import argparse
import json

import launch  # benchmarks/ is the script's directory
from default_run import benchmark_json
from machine import variants_head

from tasks.evaluation.stats import proportion_ci

SPEED = ("latency_ms_b1_t1", "latency_ms_b1_t2", "throughput_b32_t1", "throughput_b32_t2")
ANCHOR = "int8_dynamic"


def variant(row: dict, n_test: int) -> dict:
    """One variant of the printed JSON from a ``benchmark.json`` row."""
    speed = row.get("speed", {})
    out = {"name": row["name"], "kind": row["kind"], "runtime": (row.get("runtime") or "onnxruntime").split()[0]}
    out.update(size_bytes=row.get("size_bytes"), test_acc=row.get("test_acc"), val_acc=row.get("val_acc"))
    out["test_acc_ci95"] = row.get("test_acc_ci95") or proportion_ci(row.get("test_acc"), n_test)  # Wilson
    out.update({k: speed.get(k) for k in SPEED})
    out.update({k: v for k, v in speed.items() if k not in out})  # another throughput batch (the tiny size: 8)
    out.update(selected=row.get("selected"), rejected=row.get("rejected"))
    if row.get("rejected"):
        out["rejected_reason"] = row.get("rejected_reason")
    return out


def versus(sel: dict | None, other: dict | None) -> dict:
    """Size / batch-1 latency / batch-32 throughput ratios (> 1: the selected is better) and the accuracy delta."""
    if sel is None or other is None:
        return {}
    r = lambda a, b: None if not a or not b else round(a / b, 2)  # noqa: E731
    delta = None if sel["test_acc"] is None or other["test_acc"] is None else sel["test_acc"] - other["test_acc"]
    return {
        "against": other["name"],
        "size_reduction": r(other["size_bytes"], sel["size_bytes"]),
        "latency_speedup_b1_t2": r(other["latency_ms_b1_t2"], sel["latency_ms_b1_t2"]),
        "throughput_speedup_b32_t2": r(sel["throughput_b32_t2"], other["throughput_b32_t2"]),
        "test_acc_delta": None if delta is None else round(delta, 4),
    }


def test_rows(store: str) -> int:
    """The data step's ``test_rows`` metric (the size of the test split) in the run's store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string="tags.`slimray.step` = 'data'"
    )
    return int(runs[0].data.metrics.get("test_rows", 0)) if runs else 0


def summary(bench: dict, n_test: int, **extra) -> dict:
    """The printed JSON of a text classifier's run: every variant, the selected one against the
    torch FP32 reference and the anchor, the paired comparison with the teacher, then ``extra``."""
    variants = [variant(r, n_test) for r in bench["candidates"]]
    by_name = {v["name"]: v for v in variants}
    sel = next((v for v in variants if v["selected"]), None)
    return {
        **variants_head(bench, variants, sel),
        "selected_vs_reference": versus(sel, by_name.get("torch_fp32")),
        "selected_vs_anchor": versus(sel, by_name.get(ANCHOR)),
        # the benchmark's paired comparison (same test rows): delta, its 95% interval, McNemar p
        "selected_vs_teacher_paired": (bench.get("targets") or {}).get("selected_vs_teacher"),
        "test_rows": n_test,
        "notes": bench.get("notes", []),
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="experiment=textcls_tiny: a smoke run (minutes)")
    ap.add_argument("overrides", nargs="*", help="slimray overrides after experiment=textcls")
    args = ap.parse_args()
    overrides = ["experiment=textcls_tiny" if args.tiny else "experiment=textcls", *args.overrides]
    with launch.fresh_dir("slimray-textcls-") as wd:
        done = launch.slimray(overrides, wd).check()
        bench, n_test = benchmark_json(done.store), test_rows(done.store)
    print(json.dumps(summary(bench, n_test, overrides=overrides, wall_s=round(done.seconds, 1))))


if __name__ == "__main__":
    main()
