"""Figures that cannot go stale: every measured number in the docs comes from here.

    .venv/bin/python benchmarks/figures.py run NAME [NAME ...] | --all   # measure, store in docs/figures.json
    .venv/bin/python benchmarks/figures.py readme                        # rewrite the tables in the docs
    .venv/bin/python benchmarks/figures.py check                         # exit 1 if a doc != figures.json

`run` executes the benchmark script registered under NAME (``FIGURES``, through
``benchmarks/launch.py``), parses the JSON object it prints last, and stores it with the command
and the date in ``docs/figures.json``. `readme` renders every ``<!-- figures:TABLE -->`` ...
``<!-- /figures:TABLE -->`` block of README.md and docs/*.md, whichever holds it, from that file
(``TABLES``); a test checks they match and that no figures table stands outside its markers, so
a figure in the docs is always the one a script wrote, with the CPU model and threads it was
measured on.
"""

# ruff: noqa: E501 (the TABLES rows below read best one a line, however long)
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "docs" / "figures.json"
README = ROOT / "README.md"
PY = ".venv/bin/python"
HEADER = "| measure | measured | target |"

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

Row = tuple[str, str, str, str, str]  # (measure, figure, dotted path in its JSON, format, target)


def rows(spec: str) -> list[Row]:
    """The rows of a table, one a line: ``figure | measure | path | format [| target]``."""
    out = []
    for line in filter(None, (ln.strip() for ln in spec.splitlines())):
        figure, label, path, fmt, *target = (cell.strip() for cell in line.split(" | "))
        out.append((label, figure, path, fmt, target[0] if target else "—"))
    return out


# table -> its rows, one a line: figure | measure | dotted path in its JSON | format [| target, default "—"];
# each table is rendered between <!-- figures:TABLE --> markers in one doc (README.md or docs/*.md)
TABLES: dict[str, list[Row]] = {
    "compress": rows(
        """
        default_run | `make run` wall time (default `compress`, empty directory) | wall_s | {:.0f} s | ≤ 10 min
        default_run | teacher test accuracy | teacher_test_acc | {:.3f} | ≥ 0.94
        default_run | selected model: file size vs teacher FP32 ONNX | size_reduction | {:.1f}× smaller | ≥ 20×
        default_run | selected model: batch-256 throughput vs teacher | throughput_speedup | {:.1f}× | ≥ 5×
        default_run | selected model: test accuracy vs teacher | test_acc_delta | {:+.3f} | ≥ −0.01
        default_run | INT8 vs FP32 of the same model: throughput | int8_throughput_speedup | {:.2f}× | ≥ 1.5×
        default_run | INT8 vs FP32 of the same model: accuracy | int8_test_acc_delta | {:+.3f} | ≥ −0.005
        """
    ),
    "engine": rows(
        """
        engine_overhead | fixed cost (Ray start + tracking set-up) | fixed_cost_s | {:.1f} s | ≤ 10 s
        engine_overhead | cost per step (26 trivial steps) | per_step_ms | {:.0f} ms | ≤ 100 ms
        engine_overhead | cached rerun, whole CLI command (26-step DAG) | cached_rerun_cli_s | {:.1f} s | ≤ 8 s
        cached_rerun_smoke | cached rerun, whole CLI command (`experiment=smoke`) | cached_rerun_cli_s | {:.1f} s | ≤ 4 s
        pipeline_overhead | engine vs plain script on `compress` (cache off) | ratio | {:.2f}× | ≤ 1.10×
        sweep_scaling_small_batch | 8-trial pruning sweep vs one after another (batch 32) | speedup | {:.2f}× | ≥ 1.7×
        sweep_scaling | 8-trial pruning sweep vs one after another (batch 128) | speedup | {:.2f}× | ≥ 1.7×
        kd_gain | KD gain over the better scratch baseline (3 seeds) | gain_points_mean | {:+.1f} points | ≥ +1.0
        ctrl_c | Ctrl-C of a single run: exit 130 within 10 s, nothing left RUNNING | single.passed | {}/10 | 10/10
        ctrl_c | … of a multirun (`-m`, 2 executions) | multirun.passed | {}/10 | 10/10
        ctrl_c | … of a search (`experiment=search`, in a trial) | search.passed | {}/10 | 10/10
        ctrl_c | … slowest exit of the three | max_exit_s | {:.1f} s | ≤ 10 s
        multirun_sharing | `-m` with 3 executions sharing the teacher: wall vs one execution (`smoke`) | wall_ratio | {:.2f}× | ≤ 1.6×
        multirun_sharing | … teacher runs computed (3 recorded) | teacher_runs_computed | {} | 1
        """
    ),
    "scale": rows(
        """
        parallel_inference | 2 data-parallel replicas vs 1 (MLP, 200k rows) | ratio_dp2_vs_single | {:.2f}× | ≥ 1.8×
        parallel_inference | 1 replica vs a plain in-process loop | ratio_single_vs_plain | {:.2f}× | ≥ 0.9×
        parallel_inference | 2 pipeline stages vs the unsplit model on one actor (deep MLP) | ratio_pp2_vs_unsplit | {:.2f}× | ≥ 1.6×
        parallel_inference | … ceiling: two whole-model actors vs one, same model | ceiling_two_actors_vs_one_pp_model | {:.2f}×
        parallel_inference | … bubble fraction | pp2_bubble_fraction | {:.2f}
        parallel_inference | … max abs diff, stages vs unsplit (FP32) | max_abs_diff | {:.1e} | ≤ 1e-5
        parallel_inference | rows lost, a replica SIGKILLed mid-run | rows_lost | {} | 0
        parallel_inference | rows duplicated, same run | rows_duplicated | {} | 0
        serve_load | serve, concurrency 32: batching vs not (large zoo model) | large_batching_speedup_c32 | {:.2f}× | ≥ 3×
        serve_load | … same, small `compress`-size model | small_batching_speedup_c32 | {:.2f}×
        serve_load | serve p50 at concurrency 1 minus a direct ORT call (large) | large_p50_c1_minus_direct_ms | {:.1f} ms | ≤ 5 ms
        serve_load | … same, small model | small_p50_c1_minus_direct_ms | {:.1f} ms | ≤ 5 ms
        serve_load | serve errors under load (all levels, with and without batching) | errors_total | {} | 0
        """
    ),
    "methods": rows(
        """
        kbit_quantizers | KD student FP32 test accuracy (3 seeds; reference for the k-bit rows) | student.fp32_test_acc_mean | {:.3f}
        kbit_quantizers | uniform, 2-bit weights: test accuracy | student.kbit.uniform.2.test_acc_mean | {:.3f}
        kbit_quantizers | uniform, 4-bit weights: test accuracy | student.kbit.uniform.4.test_acc_mean | {:.3f}
        kbit_quantizers | uniform, 8-bit weights: test accuracy | student.kbit.uniform.8.test_acc_mean | {:.3f}
        kbit_quantizers | mean/std (k = 3), 2-bit weights: test accuracy | student.kbit.mean.2.test_acc_mean | {:.3f}
        kbit_quantizers | mean/std (k = 3), 4-bit weights: test accuracy | student.kbit.mean.4.test_acc_mean | {:.3f}
        kbit_quantizers | mean/std (k = 3), 8-bit weights: test accuracy | student.kbit.mean.8.test_acc_mean | {:.3f}
        kbit_quantizers | log2, 2-bit weights: test accuracy | student.kbit.log2.2.test_acc_mean | {:.3f}
        kbit_quantizers | log2, 4-bit weights: test accuracy | student.kbit.log2.4.test_acc_mean | {:.3f}
        kbit_quantizers | log2, 8-bit weights: test accuracy | student.kbit.log2.8.test_acc_mean | {:.3f}
        kbit_quantizers | uniform asymmetric, 4-bit weights: test accuracy | student.kbit.uniform_asym.4.test_acc_mean | {:.3f}
        kbit_quantizers | 4-bit weights: size at the bit width (simulated) | student.kbit.uniform.4.bit_size_bytes | {:.0f} B
        kbit_quantizers | … FP32 weights | student.fp32_size_bytes | {:.0f} B
        kd_gain_mutual | scratch student, as many steps as KD (3 seeds) | scratch_steps_mean | {:.3f}
        kd_gain_mutual | one-way KD (Hinton) student | kd_mean | {:.3f}
        kd_gain_mutual | two-way (mutual) students, no teacher | mutual_mean | {:.3f}
        kd_gain_mutual | two-way (mutual) students + teacher logits | mutual_teacher_mean | {:.3f}
        multitask_gain | multi-task student, digit head (3 seeds) | summary.identity.multitask_mean | {:.3f}
        multitask_gain | … single-task student of the same trunk, digit | summary.identity.single_mean | {:.3f}
        multitask_gain | … digit teacher | summary.identity.teacher | {:.3f}
        multitask_gain | multi-task student, parity head | summary.parity.multitask_mean | {:.3f}
        multitask_gain | … single-task student of the same trunk, parity | summary.parity.single_mean | {:.3f}
        multitask_gain | … parity teacher | summary.parity.teacher | {:.3f}
        """
    ),
    "search": rows(
        """
        search_efficiency_quick | search: best feasible throughput (mean of 3 seeds) | methods.search.best_feasible_throughput_mean | {:,.0f} samples/s | ≥ grid's
        search_efficiency_quick | … grid, same number of trained candidates | methods.grid.best_feasible_throughput_mean | {:,.0f} samples/s
        search_efficiency_quick | … random search, same budget | methods.random.best_feasible_throughput_mean | {:,.0f} samples/s
        search_efficiency_quick | search: hypervolume of val_acc × log10 throughput | methods.search.hypervolume_mean | {:.4f} | > random's
        search_efficiency_quick | … random search | methods.random.hypervolume_mean | {:.4f}
        search_efficiency_quick | … grid | methods.grid.hypervolume_mean | {:.4f}
        search_efficiency_quick | trained candidates per method | methods.search.trained_candidates | {}
        search_efficiency_quick | search wall time | methods.search.wall_s | {:.0f} s
        search_efficiency_quick | … grid | methods.grid.wall_s | {:.0f} s
        search_efficiency_quick | … random search | methods.random.wall_s | {:.0f} s
        """
    ),
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
    lines = [HEADER, "|---|---|---|"]
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
    """``text`` with every figures block it holds rendered from ``figures``."""
    for table in TABLES:
        pattern = re.compile(rf"(<!-- figures:{table} -->\n).*?(<!-- /figures:{table} -->)", re.DOTALL)
        text = pattern.sub(lambda m, t=table: m.group(1) + render(t, figures) + "\n" + m.group(2), text)
    return text


def documents() -> dict[Path, str]:
    """The docs that may hold figure tables: README.md and docs/*.md."""
    return {p: p.read_text() for p in [README, *sorted((ROOT / "docs").glob("*.md"))]}


def problems(docs: dict[Path, str], figures: dict) -> list[str]:
    """What is wrong with the figure tables of ``docs``: a stale block, a block of an unknown
    table, a table in no doc, or a figures table outside markers (typed or pasted by hand)."""
    out, held = [], set()
    for path, text in docs.items():
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        blocks = re.findall(r"<!-- figures:(\S+) -->\n.*?<!-- /figures:\1 -->", text, re.DOTALL)
        held.update(blocks)
        out += [f"{name}: no table '{b}' in benchmarks/figures.py" for b in blocks if b not in TABLES]
        if rewrite(text, figures) != text:
            out.append(f"{name}: figures differ from docs/figures.json: run `make figures`")
        outside = re.sub(r"<!-- figures:(\S+) -->\n.*?<!-- /figures:\1 -->", "", text, flags=re.DOTALL)
        if HEADER in outside:
            out.append(f"{name}: a figures table outside <!-- figures:TABLE --> markers")
    return out + [f"table '{t}' is in no document (README.md, docs/*.md)" for t in TABLES if t not in held]


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
    import launch  # beside this script (the tests load this module without benchmarks/ on the path)

    figures = load()
    for name in names:
        cmd = FIGURES[name]
        print(f"[figures] {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        done = launch.run(cmd, ROOT, timeout=4 * 3600, echo_stderr=True).check()  # progress shows
        measured = last_json(done.stdout, name)
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
    docs, figures = documents(), load()
    if args.action == "readme":
        for path, text in docs.items():
            if rewrite(text, figures) != text:
                path.write_text(rewrite(text, figures))
    found = problems(documents(), figures)
    if found:
        print("\n".join(found), file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
