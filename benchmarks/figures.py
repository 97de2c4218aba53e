"""Figures that cannot go stale: every measured number in the README comes from here.

    .venv/bin/python benchmarks/figures.py run NAME [NAME ...] | --all   # measure, store in docs/figures.json
    .venv/bin/python benchmarks/figures.py readme                        # rewrite the README tables
    .venv/bin/python benchmarks/figures.py check                         # exit 1 if README != figures.json

`run` executes the benchmark script registered under NAME (``FIGURES``), parses the JSON
object it prints last, and stores it with the command and the date in ``docs/figures.json``.
`readme` renders every ``<!-- figures:TABLE -->`` ... ``<!-- /figures:TABLE -->`` block of the
README from that file (``TABLES``); a test checks they match, so a figure in the README is
always the one a script wrote, with the CPU model and threads it was measured on.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "docs" / "figures.json"
README = ROOT / "README.md"
PY = ".venv/bin/python"

# name -> the command (from the repo root) that measures it; its last stdout line is one JSON object
FIGURES: dict[str, list[str]] = {
    "default_run": [PY, "benchmarks/default_run.py"],
    "engine_overhead": [PY, "benchmarks/engine_overhead.py"],
    "cached_rerun_smoke": [PY, "benchmarks/cached_rerun.py", "--experiment", "smoke"],
    "kd_gain": [PY, "benchmarks/kd_gain.py"],
    "pipeline_overhead": [PY, "benchmarks/pipeline_overhead.py"],
    "sweep_scaling_small_batch": [PY, "benchmarks/sweep_scaling.py", "--epochs", "4", "--batch-size", "32"],
    "sweep_scaling": [PY, "benchmarks/sweep_scaling.py"],
    "ctrl_c": [PY, "benchmarks/ctrl_c.py", "--runs", "10"],
    "parallel_inference": [PY, "benchmarks/parallel_inference.py"],
    "serve_load": [PY, "benchmarks/serve_load.py"],
    # reduced teacher epochs and transfer pool: measured on a shared, loaded 2-core machine
    "kd_gain_mutual": [PY, "benchmarks/kd_gain.py", "--teacher-epochs", "10", "--n-transfer", "10000"],
    "kbit_quantizers": [PY, "benchmarks/kbit_quantizers.py", "--teacher-epochs", "10", "--n-transfer", "10000"],
    "multitask_gain": [PY, "benchmarks/multitask_gain.py", "--teacher-epochs", "10", "--n-transfer", "10000"],
    "multirun_sharing": [PY, "benchmarks/multirun_sharing.py"],
    "search_efficiency_quick": [PY, "benchmarks/search_efficiency.py", "--quick"],
}

# table -> rows of (measure, figure, dotted path in its JSON, format, target)
TABLES: dict[str, list[tuple[str, str, str, str, str]]] = {
    "compress": [
        ("`make run` wall time (default `compress`, empty directory)", "default_run", "wall_s", "{:.0f} s", "≤ 10 min"),
        ("teacher test accuracy", "default_run", "teacher_test_acc", "{:.3f}", "≥ 0.94"),
        ("selected model: file size vs teacher FP32 ONNX", "default_run", "size_reduction", "{:.1f}× smaller", "≥ 20×"),
        ("selected model: batch-256 throughput vs teacher", "default_run", "throughput_speedup", "{:.1f}×", "≥ 5×"),
        ("selected model: test accuracy vs teacher", "default_run", "test_acc_delta", "{:+.3f}", "≥ −0.01"),
        ("INT8 vs FP32 of the same model: throughput", "default_run", "int8_throughput_speedup", "{:.2f}×", "≥ 1.5×"),
        ("INT8 vs FP32 of the same model: accuracy", "default_run", "int8_test_acc_delta", "{:+.3f}", "≥ −0.005"),
    ],
    "engine": [
        ("fixed cost (Ray start + tracking set-up)", "engine_overhead", "fixed_cost_s", "{:.1f} s", "≤ 10 s"),
        ("cost per step (26 trivial steps)", "engine_overhead", "per_step_ms", "{:.0f} ms", "≤ 100 ms"),
        ("cached rerun, whole CLI command (26-step DAG)", "engine_overhead", "cached_rerun_cli_s", "{:.1f} s", "≤ 8 s"),
        (
            "cached rerun, whole CLI command (`experiment=smoke`)",
            "cached_rerun_smoke",
            "cached_rerun_cli_s",
            "{:.1f} s",
            "≤ 8 s",
        ),
        ("engine vs plain script on `compress` (cache off)", "pipeline_overhead", "ratio", "{:.2f}×", "≤ 1.10×"),
        (
            "8-trial pruning sweep vs one after another (batch 32)",
            "sweep_scaling_small_batch",
            "speedup",
            "{:.2f}×",
            "≥ 1.7×",
        ),
        ("8-trial pruning sweep vs one after another (batch 128)", "sweep_scaling", "speedup", "{:.2f}×", "≥ 1.7×"),
        (
            "KD gain over the better scratch baseline (3 seeds)",
            "kd_gain",
            "gain_points_mean",
            "{:+.1f} points",
            "≥ +1.0",
        ),
        ("Ctrl-C: runs exiting with 130 within 10 s, nothing left RUNNING", "ctrl_c", "passed", "{}/10", "10/10"),
        (
            "`-m` with 3 executions sharing the teacher: wall vs one execution (`smoke`)",
            "multirun_sharing",
            "wall_ratio",
            "{:.2f}×",
            "≤ 1.6×",
        ),
        ("… teacher runs computed (3 recorded)", "multirun_sharing", "teacher_runs_computed", "{}", "1"),
    ],
    "scale": [
        (
            "2 data-parallel replicas vs 1 (MLP, 200k rows)",
            "parallel_inference",
            "ratio_dp2_vs_single",
            "{:.2f}×",
            "≥ 1.8×",
        ),
        ("1 replica vs a plain in-process loop", "parallel_inference", "ratio_single_vs_plain", "{:.2f}×", "≥ 0.9×"),
        (
            "2 pipeline stages vs the unsplit model on one actor (deep MLP)",
            "parallel_inference",
            "ratio_pp2_vs_unsplit",
            "{:.2f}×",
            "≥ 1.6×",
        ),
        (
            "… ceiling: two whole-model actors vs one, same model",
            "parallel_inference",
            "ceiling_two_actors_vs_one_pp_model",
            "{:.2f}×",
            "—",
        ),
        ("… bubble fraction", "parallel_inference", "pp2_bubble_fraction", "{:.2f}", "—"),
        ("… max abs diff, stages vs unsplit (FP32)", "parallel_inference", "max_abs_diff", "{:.1e}", "≤ 1e-5"),
        ("rows lost, a replica SIGKILLed mid-run", "parallel_inference", "rows_lost", "{}", "0"),
        ("rows duplicated, same run", "parallel_inference", "rows_duplicated", "{}", "0"),
        (
            "serve, concurrency 32: batching vs not (large zoo model)",
            "serve_load",
            "large_batching_speedup_c32",
            "{:.2f}×",
            "≥ 3×",
        ),
        ("… same, small `compress`-size model", "serve_load", "small_batching_speedup_c32", "{:.2f}×", "—"),
        (
            "serve p50 at concurrency 1 minus a direct ORT call (large)",
            "serve_load",
            "large_p50_c1_minus_direct_ms",
            "{:.1f} ms",
            "≤ 5 ms",
        ),
        ("… same, small model", "serve_load", "small_p50_c1_minus_direct_ms", "{:.1f} ms", "≤ 5 ms"),
        ("serve errors under load (all levels, with and without batching)", "serve_load", "errors_total", "{}", "0"),
    ],
    "methods": [
        (
            "KD student FP32 test accuracy (3 seeds; reference for the k-bit rows)",
            "kbit_quantizers",
            "student.fp32_test_acc_mean",
            "{:.3f}",
            "—",
        ),
        (
            "uniform, 2-bit weights: test accuracy",
            "kbit_quantizers",
            "student.kbit.uniform.2.test_acc_mean",
            "{:.3f}",
            "—",
        ),
        (
            "uniform, 4-bit weights: test accuracy",
            "kbit_quantizers",
            "student.kbit.uniform.4.test_acc_mean",
            "{:.3f}",
            "—",
        ),
        (
            "uniform, 8-bit weights: test accuracy",
            "kbit_quantizers",
            "student.kbit.uniform.8.test_acc_mean",
            "{:.3f}",
            "—",
        ),
        (
            "mean/std (k = 3), 2-bit weights: test accuracy",
            "kbit_quantizers",
            "student.kbit.mean.2.test_acc_mean",
            "{:.3f}",
            "—",
        ),
        (
            "mean/std (k = 3), 4-bit weights: test accuracy",
            "kbit_quantizers",
            "student.kbit.mean.4.test_acc_mean",
            "{:.3f}",
            "—",
        ),
        (
            "mean/std (k = 3), 8-bit weights: test accuracy",
            "kbit_quantizers",
            "student.kbit.mean.8.test_acc_mean",
            "{:.3f}",
            "—",
        ),
        ("log2, 2-bit weights: test accuracy", "kbit_quantizers", "student.kbit.log2.2.test_acc_mean", "{:.3f}", "—"),
        ("log2, 4-bit weights: test accuracy", "kbit_quantizers", "student.kbit.log2.4.test_acc_mean", "{:.3f}", "—"),
        ("log2, 8-bit weights: test accuracy", "kbit_quantizers", "student.kbit.log2.8.test_acc_mean", "{:.3f}", "—"),
        (
            "uniform asymmetric, 4-bit weights: test accuracy",
            "kbit_quantizers",
            "student.kbit.uniform_asym.4.test_acc_mean",
            "{:.3f}",
            "—",
        ),
        (
            "4-bit weights: size at the bit width (simulated)",
            "kbit_quantizers",
            "student.kbit.uniform.4.bit_size_bytes",
            "{:.0f} B",
            "—",
        ),
        ("… FP32 weights", "kbit_quantizers", "student.fp32_size_bytes", "{:.0f} B", "—"),
        ("scratch student, as many steps as KD (3 seeds)", "kd_gain_mutual", "scratch_steps_mean", "{:.3f}", "—"),
        ("one-way KD (Hinton) student", "kd_gain_mutual", "kd_mean", "{:.3f}", "—"),
        ("two-way (mutual) students, no teacher", "kd_gain_mutual", "mutual_mean", "{:.3f}", "—"),
        ("two-way (mutual) students + teacher logits", "kd_gain_mutual", "mutual_teacher_mean", "{:.3f}", "—"),
        (
            "multi-task student, digit head (3 seeds)",
            "multitask_gain",
            "summary.identity.multitask_mean",
            "{:.3f}",
            "—",
        ),
        (
            "… single-task student of the same trunk, digit",
            "multitask_gain",
            "summary.identity.single_mean",
            "{:.3f}",
            "—",
        ),
        ("… digit teacher", "multitask_gain", "summary.identity.teacher", "{:.3f}", "—"),
        ("multi-task student, parity head", "multitask_gain", "summary.parity.multitask_mean", "{:.3f}", "—"),
        (
            "… single-task student of the same trunk, parity",
            "multitask_gain",
            "summary.parity.single_mean",
            "{:.3f}",
            "—",
        ),
        ("… parity teacher", "multitask_gain", "summary.parity.teacher", "{:.3f}", "—"),
    ],
    "search": [
        (
            "search: best feasible throughput (mean of 3 seeds)",
            "search_efficiency_quick",
            "methods.search.best_feasible_throughput_mean",
            "{:,.0f} samples/s",
            "≥ grid's",
        ),
        (
            "… grid, same number of trained candidates",
            "search_efficiency_quick",
            "methods.grid.best_feasible_throughput_mean",
            "{:,.0f} samples/s",
            "—",
        ),
        (
            "… random search, same budget",
            "search_efficiency_quick",
            "methods.random.best_feasible_throughput_mean",
            "{:,.0f} samples/s",
            "—",
        ),
        (
            "search: hypervolume of val_acc × log10 throughput",
            "search_efficiency_quick",
            "methods.search.hypervolume_mean",
            "{:.4f}",
            "> random's",
        ),
        ("… random search", "search_efficiency_quick", "methods.random.hypervolume_mean", "{:.4f}", "—"),
        ("… grid", "search_efficiency_quick", "methods.grid.hypervolume_mean", "{:.4f}", "—"),
        ("trained candidates per method", "search_efficiency_quick", "methods.search.trained_candidates", "{}", "—"),
        ("search wall time", "search_efficiency_quick", "methods.search.wall_s", "{:.0f} s", "—"),
        ("… grid", "search_efficiency_quick", "methods.grid.wall_s", "{:.0f} s", "—"),
        ("… random search", "search_efficiency_quick", "methods.random.wall_s", "{:.0f} s", "—"),
    ],
}


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


def _where(entry: dict) -> str:
    m = entry["measured"]
    threads = f", {m['threads']} thread(s)" if m.get("threads") is not None else ""
    cores = m.get("cpus", m.get("cores", "?"))
    return f"{m.get('cpu_model', '?')}, {cores} cores{threads}, {m.get('date', entry.get('date', '?'))}"


def render(table: str, figures: dict) -> str:
    """The Markdown of one README block: the table, then the command and machine of each figure."""
    lines = ["| measure | measured | target |", "|---|---|---|"]
    used: list[str] = []
    for label, name, path, fmt, target in TABLES[table]:
        entry = figures.get(name)
        try:
            value = fmt.format(_get(entry["measured"], path)) if entry else "not measured"
        except (KeyError, IndexError, TypeError, ValueError):
            value = "not measured"
        lines.append(f"| {label} | {value} | {target} |")
        if entry and name not in used:
            used.append(name)
    lines.append("")
    for name in used:
        lines.append(f"- `{' '.join(figures[name]['command'])}`: {_where(figures[name])}")
    return "\n".join(lines)


def rewrite(text: str, figures: dict) -> str:
    for table in TABLES:
        pattern = re.compile(rf"(<!-- figures:{table} -->\n).*?(<!-- /figures:{table} -->)", re.DOTALL)
        text = pattern.sub(lambda m, t=table: m.group(1) + render(t, figures) + "\n" + m.group(2), text)
    return text


def last_json(stdout: str, name: str) -> dict:
    """The last JSON object in ``stdout``, one line or indented (libraries may print around it)."""
    lines = stdout.strip().splitlines()
    for start in reversed([i for i, line in enumerate(lines) if line.startswith("{")]):
        for end in range(len(lines), start, -1):
            try:
                return json.loads("\n".join(lines[start:end]))
            except ValueError:
                continue
    raise SystemExit(f"{name}: no JSON object in its output; last lines:\n{stdout[-2000:]}")


def load() -> dict:
    return json.loads(STORE.read_text()) if STORE.exists() else {}


def run(names: list[str]) -> None:
    figures = load()
    for name in names:
        cmd = FIGURES[name]
        print(f"[figures] {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
        measured = last_json(out.stdout, name)
        figures[name] = {"command": cmd, "date": time.strftime("%Y-%m-%d"), "measured": measured}
        STORE.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")  # after each: keep what ran


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["run", "readme", "check"])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--all", action="store_true")
    args = ap.parse_args()
    if args.action == "run":
        unknown = [n for n in args.names if n not in FIGURES]
        if unknown or not (args.names or args.all):
            print(f"error: name one or more of {sorted(FIGURES)} or --all (unknown: {unknown})", file=sys.stderr)
            return 2
        run(list(FIGURES) if args.all else args.names)
        return 0
    current = README.read_text()
    wanted = rewrite(current, load())
    if args.action == "readme":
        README.write_text(wanted)
        return 0
    if wanted != current:
        print("README figures differ from docs/figures.json: run `make figures`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
