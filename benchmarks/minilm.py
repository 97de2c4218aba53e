"""all-MiniLM-L6-v2 compressed by `slimray experiment=minilm`, measured side by side in one run.

Runs the pipeline in an empty directory (embedded Ray, a fresh sqlite MLflow store), reads the
benchmark step's `benchmark.json` and prints one JSON object: every variant (torch FP32, the
reference, included) with its size, batch-1 latency and batch-32 throughput at 2 threads, cosine
to the torch FP32 embeddings on the evaluation set (mean, worst row), top-1 retrieval agreement,
and whether it was selected or rejected by the parity gate; then the selected model's ratios
against torch FP32 and the machine.

    .venv/bin/python benchmarks/minilm.py [overrides...]     # needs: pip install -e '.[nlp]'
    .venv/bin/python benchmarks/minilm.py pipeline.steps.benchmark.params.runtimes=[onnxruntime]   # ORT only
    .venv/bin/python benchmarks/minilm.py experiment=minilm_large   # students on the package-docstring corpus
"""

from __future__ import annotations

import argparse
import json

from default_run import run_fresh  # benchmarks/ is the script's directory
from machine import variants_head

FIELDS = ("size_bytes", "cos_mean", "cos_min", "top1_agree", "selected", "rejected")


def variant(row: dict) -> dict:
    """One variant of the printed JSON from a ``benchmark.json`` row."""
    speed = row.get("speed", {})
    out = {"name": row["name"], "kind": row["kind"], "runtime": (row.get("runtime") or "onnxruntime").split()[0]}
    out.update({k: row.get(k) for k in FIELDS})
    for key in ("latency_ms_b1_t1", "latency_ms_b1_t2", "throughput_b32_t1", "throughput_b32_t2"):
        out[key] = speed.get(key)
    if row.get("rejected"):
        out["rejected_reason"] = row.get("rejected_reason")
    return out


def ratios(sel: dict | None, ref: dict) -> dict:
    """The targets' ratios of the selected variant against torch FP32 (> 1 is better)."""
    if sel is None:
        return {}
    r = lambda a, b: None if not a or not b else round(a / b, 2)  # noqa: E731
    return {
        "size_reduction": r(ref["size_bytes"], sel["size_bytes"]),
        "latency_speedup_b1_t2": r(ref["latency_ms_b1_t2"], sel["latency_ms_b1_t2"]),
        "throughput_speedup_b32_t2": r(sel["throughput_b32_t2"], ref["throughput_b32_t2"]),
        "cos_mean": sel["cos_mean"],
        "cos_min": sel["cos_min"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="slimray overrides after experiment=minilm")
    given = ap.parse_args().overrides
    overrides = given if any(o.startswith("experiment=") for o in given) else ["experiment=minilm", *given]
    wall, bench = run_fresh(overrides, prefix="slimray-minilm-")
    variants = [variant(r) for r in bench["candidates"]]
    ref = next(v for v in variants if v["name"] == "torch_fp32")
    sel = next((v for v in variants if v["selected"]), None)
    print(
        json.dumps(
            {
                **variants_head(bench, variants, sel),
                "selected_vs_reference": ratios(sel, ref),
                "notes": bench.get("notes", []),
                "overrides": overrides,
                "wall_s": round(wall, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
