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
    # the fastest ingress (serve_ingress), slimray serve's default with auth_token; run in a private network namespace
    "serve_load": [PY, "benchmarks/serve_load.py", "--ingress", "haproxy"],
    # proxy, throughput, haproxy and grpc on the same models and load (serve_load.py once each, in one command)
    "serve_ingress": [PY, "benchmarks/serve_ingress.py"],
    # reduced teacher epochs and transfer pool: measured on a shared, loaded 2-core machine
    "kd_gain_mutual": [PY, "benchmarks/kd_gain.py", "--teacher-epochs", "10", "--n-transfer", "10000"],
    "kbit_quantizers": [PY, "benchmarks/kbit_quantizers.py", "--teacher-epochs", "10", "--n-transfer", "10000"],
    "multitask_gain": [PY, "benchmarks/multitask_gain.py", "--teacher-epochs", "10", "--n-transfer", "10000"],
    "multirun_sharing": [PY, "benchmarks/multirun_sharing.py"],
    # search vs grid vs random: 24 trials x 5 seeds, every method in the one run (no entry merged by hand)
    "search_efficiency": [PY, "benchmarks/search_efficiency.py"],
    "byo": [PY, "benchmarks/byo.py"],  # your own model: `python -m examples.byo.prepare`, then experiment=byo
    "minilm": [PY, "benchmarks/minilm.py"],  # experiment=minilm (make install-nlp)
    # the 4-layer MiniLM student's cosine to the teacher against the sentences it trained on (make install-nlp)
    "minilm_curve": [PY, "benchmarks/minilm_curve.py", "--sizes", "1000", "4000", "16000"],
    # NNCF INT8 of MiniLM on OpenVINO: the embedding tables' settings (make install-nlp)
    "nncf_settings": [PY, "benchmarks/nncf_settings.py"],
    # experiment=textcls (make install-nlp), every candidate on ONNX Runtime and OpenVINO, at 300 texts per
    # package and split: the full size (2,000) takes 2-3 h on 2 cores
    "textcls": [
        PY,
        "benchmarks/textcls.py",
        "pipeline.steps.data.params.max_per_label=300",
        "pipeline.steps.benchmark.params.runtimes=[onnxruntime,openvino]",
    ],
    # experiment=hf_textcls as a user runs it: all-MiniLM-L6-v2's folder (fine-tuned first: it has no head) and the
    # textcls corpus written to CSV files, 300 texts per package and split (make install-nlp)
    "hf_textcls": [PY, "benchmarks/hf_textcls.py", "--per-label", "300"],
    # experiment=llm on SmolLM2-135M-Instruct (llm extra) with the optimum-intel anchor (make bench-llm-anchor)
    "llm": [PY, "benchmarks/llm.py", "--anchor"],
    # SmolLM2-135M on every decoding path: torch, ONNX Runtime, OpenVINO with the cache outside / inside the plugin
    "llm_decoders": [PY, "benchmarks/llm_decoders.py"],
    # SmolLM2-135M served the OpenAI way vs in process; model- and data-parallel generation vs the ceiling
    "serve_llm": [PY, "benchmarks/serve_llm.py"],
}

# not run by `run --all` (make bench): hours on 2 cores, or an extra to install; `run --all --long` includes them
LONG = {
    *("search_efficiency", "minilm", "minilm_curve", "nncf_settings", "textcls", "hf_textcls"),
    *("llm", "llm_decoders", "serve_llm"),
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
        default_run | teacher test accuracy [95% interval over the test rows] | teacher_test_acc, teacher_test_acc_ci95 || teacher_test_acc | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (point value, measured before its interval) | ≥ 0.94
        default_run | selected model: file size vs teacher FP32 ONNX | size_reduction | {:.1f}× smaller | ≥ 20×
        default_run | selected model: batch-256 throughput vs teacher | throughput_speedup | {:.1f}× | ≥ 5×
        default_run | selected model: test accuracy vs teacher [paired 95% interval], McNemar p | test_acc_delta, test_acc_delta_ci95, test_acc_delta_p || test_acc_delta | {:+.3f} [{:+.3f}, {:+.3f}], p = {:.2g} || {:+.3f} (point value, measured before its interval) | ≥ −0.01
        default_run | INT8 vs FP32 of the same model: throughput | int8_throughput_speedup | {:.2f}× | ≥ 1.5×
        default_run | INT8 vs FP32 of the same model: accuracy [paired 95% interval], McNemar p | int8_test_acc_delta, int8_test_acc_delta_ci95, int8_test_acc_delta_p || int8_test_acc_delta | {:+.3f} [{:+.3f}, {:+.3f}], p = {:.2g} || {:+.3f} (point value, measured before its interval) | ≥ −0.005
        """
    ),
    "engine": rows(
        """
        engine_overhead | fixed cost (Ray start + tracking set-up) | fixed_cost_s | {:.1f} s | ≤ 10 s
        engine_overhead | cost per step (trivial steps) | per_step_ms, steps | {:.0f} ms ({} steps) | ≤ 100 ms
        engine_overhead | cached rerun, whole CLI command (the same DAG) | cached_rerun_cli_s | {:.1f} s | ≤ 8 s
        cached_rerun_smoke | cached rerun, whole CLI command (`experiment=smoke`) | cached_rerun_cli_s | {:.1f} s | ≤ 4 s
        pipeline_overhead | engine vs plain script on `compress` (cache off) | ratio | {:.2f}× | ≤ 1.10×
        sweep_scaling_small_batch | pruning sweep vs one after another (batch 32) | speedup, trials | {:.2f}× ({} trials) | ≥ 1.7×
        sweep_scaling | pruning sweep vs one after another (batch 128) | speedup, trials | {:.2f}× ({} trials) | ≥ 1.7×
        kd_gain | KD gain over the better scratch baseline [95% interval over seeds] | gain_points_mean, gain_points_ci95, seeds || gain_points_mean, runs.# | {:+.1f} points [{:+.1f}, {:+.1f}] ({} seeds) || {:+.1f} points ({} seeds, no interval) | ≥ +1.0
        ctrl_c | Ctrl-C of a single run: exit 130 within 10 s, nothing left RUNNING | single.passed, single.runs | {}/{} | all runs
        ctrl_c | … of a multirun (`-m`, 2 executions) | multirun.passed, multirun.runs | {}/{} | all runs
        ctrl_c | … of a search (`experiment=search`, in a trial) | search.passed, search.runs | {}/{} | all runs
        ctrl_c | … slowest exit of the three | max_exit_s | {:.1f} s | ≤ 10 s
        multirun_sharing | `-m` with executions sharing the teacher: wall vs one execution (`smoke`) | wall_ratio, executions | {:.2f}× ({} executions) | ≤ 1.6×
        multirun_sharing | … teacher runs computed | teacher_runs_computed, teacher_runs_recorded | {} ({} recorded) | 1
        """
    ),
    "scale": rows(
        """
        parallel_inference | Ray Data: 2 data-parallel replicas vs 1 (small MLP, 40-512x4-10) | ratio_dp2_vs_single | {:.2f}×
        parallel_inference | … ceiling on the same model and batch: two plain processes vs one | ceiling_two_procs_small | {:.2f}×
        parallel_inference | … share of the ceiling | dp2_vs_ceiling | {:.1%} | ≥ 95%
        parallel_inference | Ray Data: 2 replicas vs 1 (heavy model, mlp_deep 40-2048x9-10) | ceiling_two_actors_vs_one_pp_model | {:.2f}×
        parallel_inference | … ceiling on the same model and batch: two plain processes vs one | ceiling_two_procs_heavy | {:.2f}×
        parallel_inference | … share of the ceiling | dp2_vs_ceiling_heavy | {:.1%} | ≥ 95%
        parallel_inference | Ray Data: 1 replica vs a plain in-process loop (small MLP) | one_replica_vs_plain | {:.2f}× | ≥ 0.95×
        parallel_inference | Ray Data vs the actor-chain pool, same work: 1 replica / 2 replicas / 2 stages | ray_data_vs_pool_single, ray_data_vs_pool_dp2, ray_data_vs_pool_pp2 | {:.2f}× / {:.2f}× / {:.2f}× | ≥ 0.9×, or the pool where it wins
        parallel_inference | Ray Data: wall time outside the busy span, 2 replicas (actor start-up, model load; small MLP) | dp2_startup_s | {:.1f} s
        parallel_inference | 2 pipeline stages vs the unsplit model on one actor, on the pool (the engine's path for stages; heavy model) | ratio_pp2_vs_unsplit | {:.2f}× | ≥ 1.7×
        parallel_inference | … the same on Ray Data | ray_data_pp2_vs_unsplit | {:.2f}×
        parallel_inference | … bubble fraction (Ray Data) | pp2_bubble_fraction | {:.2f}
        parallel_inference | … max abs diff, stages vs unsplit (FP32) | max_abs_diff | {:.1e} | 0 (identical)
        parallel_inference | rows lost / duplicated, a Ray Data stage actor SIGKILLed mid-run | rows_lost, rows_duplicated | {} / {} | 0 / 0
        serve_load | serve ingress of this run (`ingress=`) | ingress | `{}`
        serve_load | serve, concurrency 32: batching vs not (large zoo model) | large_batching_speedup_c32 | {:.2f}× | ≥ 3×
        serve_load | … ceiling: in-process ORT, batch 32 vs batch 1 samples/s (large) | large_direct_batch_gain_b32 | {:.2f}×
        serve_load | … same, small `compress`-size model | small_batching_speedup_c32 | {:.2f}×
        serve_load | serve p50 at concurrency 1 minus a direct ORT call (large) | large_p50_c1_minus_direct_ms | {:.1f} ms
        serve_load | … same, small model | small_p50_c1_minus_direct_ms | {:.1f} ms | ≤ 3 ms
        serve_load | MiniLM served on `/embed` from text: worst cosine to in-process, 100 sentences | minilm_cos_min_100 | {:.5f} | ≥ 0.999
        serve_load | MiniLM served, req/s at concurrency 16 (8 sentences each) vs in-process batched ORT | minilm_rps_c16_vs_inprocess | {:.2f}× | ≥ 0.7×
        serve_load | serve errors under load (all levels, with and without batching) | errors_total | {} | 0
        """
    ),
    "methods": rows(
        """
        kbit_quantizers | KD student FP32 test accuracy (reference for the k-bit rows) | student.fp32_test_acc_mean, student.fp32_test_acc_ci95, student.seeds.# || student.fp32_test_acc_mean, student.seeds.# | {:.3f} [{:.3f}, {:.3f}] ({} seeds) || {:.3f} ({} seeds, no interval)
        kbit_quantizers | uniform, 2-bit weights: test accuracy | student.kbit.uniform.2.test_acc_mean, student.kbit.uniform.2.test_acc_ci95 || student.kbit.uniform.2.test_acc_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        kbit_quantizers | uniform, 4-bit weights: test accuracy | student.kbit.uniform.4.test_acc_mean, student.kbit.uniform.4.test_acc_ci95 || student.kbit.uniform.4.test_acc_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        kbit_quantizers | uniform, 8-bit weights: test accuracy | student.kbit.uniform.8.test_acc_mean, student.kbit.uniform.8.test_acc_ci95 || student.kbit.uniform.8.test_acc_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        kbit_quantizers | mean/std (k = 3), 2-bit weights: test accuracy | student.kbit.mean.2.test_acc_mean, student.kbit.mean.2.test_acc_ci95 || student.kbit.mean.2.test_acc_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        kbit_quantizers | mean/std (k = 3), 4-bit weights: test accuracy | student.kbit.mean.4.test_acc_mean, student.kbit.mean.4.test_acc_ci95 || student.kbit.mean.4.test_acc_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        kbit_quantizers | mean/std (k = 3), 8-bit weights: test accuracy | student.kbit.mean.8.test_acc_mean, student.kbit.mean.8.test_acc_ci95 || student.kbit.mean.8.test_acc_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        kbit_quantizers | log2, 2-bit weights: test accuracy | student.kbit.log2.2.test_acc_mean, student.kbit.log2.2.test_acc_ci95 || student.kbit.log2.2.test_acc_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        kbit_quantizers | log2, 4-bit weights: test accuracy | student.kbit.log2.4.test_acc_mean, student.kbit.log2.4.test_acc_ci95 || student.kbit.log2.4.test_acc_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        kbit_quantizers | log2, 8-bit weights: test accuracy | student.kbit.log2.8.test_acc_mean, student.kbit.log2.8.test_acc_ci95 || student.kbit.log2.8.test_acc_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        kbit_quantizers | uniform asymmetric, 4-bit weights: test accuracy | student.kbit.uniform_asym.4.test_acc_mean, student.kbit.uniform_asym.4.test_acc_ci95 || student.kbit.uniform_asym.4.test_acc_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        kbit_quantizers | … vs FP32, paired by seed | student.kbit.uniform_asym.4.vs_fp32_points_ci95 | verdict
        kbit_quantizers | 4-bit weights: size at the bit width (simulated) | student.kbit.uniform.4.bit_size_bytes | {:.0f} B
        kbit_quantizers | … FP32 weights | student.fp32_size_bytes | {:.0f} B
        kd_gain_mutual | scratch student, as many steps as KD | scratch_steps_mean, scratch_steps_ci95, seeds || scratch_steps_mean, runs.# | {:.3f} [{:.3f}, {:.3f}] ({} seeds) || {:.3f} ({} seeds, no interval)
        kd_gain_mutual | one-way KD (Hinton) student | kd_mean, kd_ci95 || kd_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        kd_gain_mutual | two-way (mutual) students, no teacher | mutual_mean, mutual_ci95 || mutual_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        kd_gain_mutual | two-way (mutual) students + teacher logits | mutual_teacher_mean, mutual_teacher_ci95 || mutual_teacher_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        kd_gain_mutual | two-way + teacher vs one-way KD, points, paired by seed | mutual_teacher_vs_kd_points_ci95 | verdict
        kd_gain_mutual | two-way without a teacher vs the better scratch student, points | mutual_vs_best_scratch_points_ci95 | verdict
        multitask_gain | multi-task student, digit head | summary.identity.multitask_mean, summary.identity.multitask_ci95, seeds || summary.identity.multitask_mean, runs.# | {:.3f} [{:.3f}, {:.3f}] ({} seeds) || {:.3f} ({} seeds, no interval)
        multitask_gain | … single-task student of the same trunk, digit | summary.identity.single_mean, summary.identity.single_ci95 || summary.identity.single_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        multitask_gain | … multi-task vs single-task, digit, points, paired by seed | summary.identity.multitask_vs_single_points_ci95 | verdict
        multitask_gain | … digit teacher | summary.identity.teacher | {:.3f}
        multitask_gain | multi-task student, parity head | summary.parity.multitask_mean, summary.parity.multitask_ci95 || summary.parity.multitask_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        multitask_gain | … single-task student of the same trunk, parity | summary.parity.single_mean, summary.parity.single_ci95 || summary.parity.single_mean | {:.3f} [{:.3f}, {:.3f}] || {:.3f} (no interval)
        multitask_gain | … multi-task vs single-task, parity, points, paired by seed | summary.parity.multitask_vs_single_points_ci95 | verdict
        multitask_gain | … parity teacher | summary.parity.teacher | {:.3f}
        """
    ),
    "search": rows(
        """
        search_efficiency | search: best feasible throughput [95% interval over seeds] | methods.search.best_feasible_throughput_mean, methods.search.best_feasible_throughput_ci95, seeds | {:,.0f} [{:,.0f}, {:,.0f}] samples/s ({} seeds) | ≥ grid's
        search_efficiency | … grid, same number of trained candidates | methods.grid.best_feasible_throughput_mean, methods.grid.best_feasible_throughput_ci95 | {:,.0f} [{:,.0f}, {:,.0f}] samples/s
        search_efficiency | … random search, same budget | methods.random.best_feasible_throughput_mean, methods.random.best_feasible_throughput_ci95 | {:,.0f} [{:,.0f}, {:,.0f}] samples/s
        search_efficiency | search vs grid, best feasible throughput, paired by seed | comparisons.search_vs_grid.throughput_diff_ci95 | verdict
        search_efficiency | search vs random, best feasible throughput, paired by seed | comparisons.search_vs_random.throughput_diff_ci95 | verdict
        search_efficiency | search: hypervolume of val_acc × log10 throughput | methods.search.hypervolume_mean, methods.search.hypervolume_ci95 | {:.4f} [{:.4f}, {:.4f}] | > random's
        search_efficiency | … random search | methods.random.hypervolume_mean, methods.random.hypervolume_ci95 | {:.4f} [{:.4f}, {:.4f}]
        search_efficiency | … grid | methods.grid.hypervolume_mean, methods.grid.hypervolume_ci95 | {:.4f} [{:.4f}, {:.4f}]
        search_efficiency | search vs random, hypervolume, paired by seed | comparisons.search_vs_random.hypervolume_diff_ci95 | verdict
        search_efficiency | trained candidates search needs to reach 95% of the grid's best (worst seed) | methods.search.candidates_to_95pct_of_grid_best.max, methods.search.candidates_to_95pct_of_grid_best.reached, seeds, methods.grid.trained_candidates | {} (reached in {} of {} seeds; the grid trains {}) | ≤ ½ of the grid's
        search_efficiency | … random search (worst seed) | methods.random.candidates_to_95pct_of_grid_best.max, methods.random.candidates_to_95pct_of_grid_best.reached, seeds | {} (reached in {} of {} seeds)
        search_efficiency | trained candidates per method | methods.search.trained_candidates | {}
        search_efficiency | search wall time | methods.search.wall_s_mean | {:.0f} s
        search_efficiency | … grid | methods.grid.wall_s_mean | {:.0f} s
        search_efficiency | … random search | methods.random.wall_s_mean | {:.0f} s
        """
    ),
    "byo": rows(
        """
        byo | your model: test accuracy [95% interval over the test rows] | teacher_test_acc, teacher_test_acc_ci95 | {:.4f} [{:.4f}, {:.4f}]
        byo | selected student: test accuracy | selected_test_acc, selected_test_acc_ci95 | {:.4f} [{:.4f}, {:.4f}]
        byo | selected vs your model: test accuracy, points [paired 95% interval], McNemar p | test_acc_delta_points, test_acc_delta_points_ci95, test_acc_delta_p | {:+.2f} [{:+.2f}, {:+.2f}], p = {:.2g} | ≥ −1
        byo | selected vs your model: throughput (batch 256, ONNX Runtime) | throughput_speedup | {:.1f}× | ≥ 5×
        byo | … size | size_reduction | {:.1f}× smaller
        byo | params: your model → selected | teacher_params, selected_params | {:,} → {:,}
        byo | selected model | selected | {}
        byo | pipeline wall time | pipeline_wall_s | {:.0f} s
        """
    ),
    "minilm": rows(
        """
        minilm | selected variant | selected | {}
        minilm | size vs torch FP32 | selected_vs_reference.size_reduction | {:.2f}× | ≥ 5×
        minilm | batch-1 latency vs torch FP32, 2 threads | selected_vs_reference.latency_speedup_b1_t2 | {:.2f}× | ≥ 3×
        minilm | batch-32 throughput vs torch FP32, 2 threads | selected_vs_reference.throughput_speedup_b32_t2 | {:.2f}× | ≥ 2×
        minilm | cosine to torch FP32 on the evaluation set: mean / min | selected_vs_reference.cos_mean, selected_vs_reference.cos_min | {:.4f} / {:.4f} | ≥ 0.99 / ≥ 0.97
        minilm | pipeline wall time | wall_s | {:.0f} s
        """
    ),
    "llm": rows(
        """
        llm | selected variant | selected | {}
        llm | size vs the teacher (torch FP32) | selected_vs_reference.size_reduction | {:.2f}× smaller | ≥ 4×
        llm | decode tokens/s at batch 1 vs the teacher, 2 threads | selected_vs_reference.decode_speedup_b1 | {:.2f}× | ≥ 5×
        llm | time to first token (512-token prompt) vs the teacher, 2 threads | selected_vs_reference.ttft_speedup | {:.2f}× | ≥ 2×
        llm | perplexity on held-out text vs the teacher [paired 95% interval] | selected_vs_reference.ppl_change.rel, selected_vs_reference.ppl_change.ci95 | {:+.1%} [{:+.1%}, {:+.1%}] | ≤ +5%
        llm | memory bandwidth of this machine (numpy copy, read + write) | bandwidth_gbs | {:.1f} GB/s
        llm | vs optimum-intel's default INT4 (the plain-script anchor): decode tokens/s at batch 1 | selected_vs_anchor.decode_speedup_b1 | {:.2f}× | faster at no higher perplexity
        llm | … perplexity change vs the anchor [paired 95% interval] | selected_vs_anchor.ppl_change.rel, selected_vs_anchor.ppl_change.ci95 | {:+.1%} [{:+.1%}, {:+.1%}] | ≤ 0, or lower at no lower speed
        llm | … the anchor's perplexity vs the teacher [paired 95% interval] | anchor.ppl_vs_reference.rel, anchor.ppl_vs_reference.ci95 | {:+.1%} [{:+.1%}, {:+.1%}]
        llm | pipeline wall time | wall_s | {:.0f} s
        """
    ),
    "serve_llm": rows(
        """
        serve_llm | `openai` client: streamed completions at concurrency 1, 4, 16: errors | errors_total | {} | 0
        serve_llm | time to first token at concurrency 1, p50: served / in process | ttft_ms_p50_c1_served, ttft_ms_p50_c1_inprocess | {:.0f} ms / {:.0f} ms
        serve_llm | … served minus in process | ttft_overhead_ms_c1 | {:+.1f} ms | ≤ 5 ms
        serve_llm | time to first token p99, served, at concurrency 1 / 16 | ttft_ms_p99_c1_served, ttft_ms_p99_c16_served | {:.0f} ms / {:.0f} ms
        serve_llm | aggregate decode tokens/s, served, at concurrency 1 / 4 / 16 | decode_tok_s_c1, decode_tok_s_c4, decode_tok_s_c16 | {:.1f} / {:.1f} / {:.1f}
        serve_llm | … concurrency 16 vs 1 | decode_c16_vs_c1 | {:.2f}× | ≥ 4×
        serve_llm | K=2 pipeline stages (actors): greedy tokens vs unsplit | pp2_identical | {} | identical
        serve_llm | K=2 throughput vs the two-process ceiling | pp2_vs_ceiling | {:.0%} | ≥ 90%
        serve_llm | R=2 actors throughput vs the two-process ceiling | dp2_vs_ceiling | {:.0%} | ≥ 90%
        serve_llm | … the ceiling: two plain processes vs one | two_process_speedup | {:.2f}×
        serve_llm | an actor SIGKILLed during batch generation: prompts lost / duplicated | rows_lost, rows_duplicated | {} / {} | 0 / 0
        """
    ),
    "textcls": rows(
        """
        textcls | selected variant | selected | {}
        textcls | size vs the fine-tuned teacher (torch FP32) | selected_vs_reference.size_reduction | {:.2f}× | ≥ 4×
        textcls | batch-1 latency vs the teacher, 2 threads | selected_vs_reference.latency_speedup_b1_t2 | {:.2f}× | ≥ 3×
        textcls | batch-32 throughput vs the teacher, 2 threads | selected_vs_reference.throughput_speedup_b32_t2 | {:.2f}×
        textcls | test accuracy vs the teacher, difference [paired 95% interval], McNemar p | selected_vs_teacher_paired.test_acc_delta, selected_vs_teacher_paired.test_acc_delta_ci95, selected_vs_teacher_paired.test_acc_delta_p || selected_vs_reference.test_acc_delta | {:+.4f} [{:+.4f}, {:+.4f}], p = {:.2g} || {:+.4f} (point value; each variant's interval in the table above) | ≥ −0.01
        textcls | vs the plain-script anchor (ORT dynamic INT8 of the teacher): batch-1 latency | selected_vs_anchor.latency_speedup_b1_t2 | {:.2f}× | > 1×
        textcls | … test accuracy difference | selected_vs_anchor.test_acc_delta | {:+.4f} | ≥ the anchor's loss
        textcls | test rows | test_rows | {:,}
        textcls | pipeline wall time | wall_s | {:.0f} s
        """
    ),
    "hf_textcls": rows(
        """
        hf_textcls | selected variant | selected | {}
        hf_textcls | size vs the fine-tuned teacher (torch FP32) | selected_vs_reference.size_reduction | {:.2f}× | ≥ 4×
        hf_textcls | batch-1 latency vs the teacher, 2 threads | selected_vs_reference.latency_speedup_b1_t2 | {:.2f}× | ≥ 3×
        hf_textcls | test accuracy vs the teacher, difference [paired 95% interval], McNemar p | selected_vs_teacher_paired.test_acc_delta, selected_vs_teacher_paired.test_acc_delta_ci95, selected_vs_teacher_paired.test_acc_delta_p || selected_vs_reference.test_acc_delta | {:+.4f} [{:+.4f}, {:+.4f}], p = {:.2g} || {:+.4f} (point value) | ≥ −0.01
        hf_textcls | test rows | test_rows | {:,}
        hf_textcls | pipeline wall time | wall_s | {:.0f} s
        """
    ),
}


def _mb(v) -> str:
    return f"{v / 1e6:.1f} MB"


def _mark(item: dict) -> str:
    return (
        "**selected**"
        if item.get("selected")
        else f"rejected: {item.get('rejected_reason', '')}"
        if item.get("rejected")
        else ""
    )


# list table -> (figure, dotted path of a list in its JSON, columns: (header, key in each item or "" for the
# whole item, format string or function)): one row per item of the list, rendered like TABLES
# the first columns of a transformer variant table (benchmarks/minilm.py, textcls.py): name, runtime, size, speed
VARIANT_SPEED: list[tuple[str, str, object]] = [
    ("variant", "name", "{}"),
    ("runtime", "runtime", "{}"),
    ("size", "size_bytes", _mb),
    ("b1 latency, 2 thr (ms)", "latency_ms_b1_t2", "{:.1f}"),
    ("b32 throughput, 2 thr (/s)", "throughput_b32_t2", "{:.1f}"),
    ("b1, 1 thr (ms)", "latency_ms_b1_t1", "{:.1f}"),
    ("b32, 1 thr (/s)", "throughput_b32_t1", "{:.1f}"),
]


def _acc(item: dict) -> str:
    acc, ci = item.get("test_acc"), item.get("test_acc_ci95")
    return "–" if acc is None else f"{acc:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def _ppl(item: dict) -> str:
    ci = item.get("ppl_ci95")
    return f"{item['ppl']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _verdict(item: dict) -> str:
    return "**selected**" if item.get("selected") else f"rejected: {item['rejected']}" if item.get("rejected") else ""


LISTS: dict[str, tuple[str, str, list[tuple[str, str, object]]]] = {
    "llm_curve": (
        "llm",
        "learning_curve",
        [
            ("distillation tokens", "tokens", "{:,}"),
            ("held-out perplexity of the depth-pruned student", "ppl", "{:.2f}"),
        ],
    ),
    "llm_decoders": (
        "llm_decoders",
        "rows",
        [
            ("runtime", "runtime", "{}"),
            ("weights", "weights", "{}"),
            ("size", "size_bytes", _mb),
            ("first token (ms)", "ttft_ms", "{:.0f}"),
            ("decode b1 (tok/s)", "decode_tok_s_b1", "{:.1f}"),
            ("vs torch", "decode_vs_torch", "{:.2f}×"),
            ("share of bandwidth bound", "bandwidth_share", "{:.0%}"),
            ("next-token agree", "next_token_agree", "{:.3f}"),
        ],
    ),
    "llm_variants": (
        "llm",
        "variants",
        [
            ("variant", "name", "{}"),
            ("runtime", "runtime", "{}"),
            ("size", "size_bytes", _mb),
            ("first token, 512 (ms)", "ttft_ms_p512_t2", "{:.0f}"),
            ("decode b1 (tok/s)", "decode_tok_s_b1_t2", "{:.1f}"),
            ("decode b8 (tok/s)", "decode_tok_s_b8_t2", "{:.1f}"),
            ("share of bandwidth bound", "bandwidth_share", "{:.0%}"),
            ("perplexity [95% interval]", "", _ppl),
            ("next-token agree", "next_token_agree", "{:.3f}"),
            ("verdict", "", _verdict),
        ],
    ),
    "textcls_variants": (
        "textcls",
        "variants",
        [
            *VARIANT_SPEED,
            ("test accuracy [95% interval]", "", _acc),
            ("verdict", "", _mark),
        ],
    ),
    "hf_textcls_variants": (
        "hf_textcls",
        "variants",
        [
            *VARIANT_SPEED,
            ("test accuracy [95% interval]", "", _acc),
            ("verdict", "", _mark),
        ],
    ),
    "ingress": (
        "serve_ingress",
        "table",
        [
            ("ingress", "ingress", "`{}`"),
            ("small: p50, concurrency 1 (ms)", "small_p50_c1_ms", "{:.2f}"),
            ("… minus a direct ORT call (ms; target ≤ 3)", "small_p50_c1_minus_direct_ms", "{:.2f}"),
            ("small, batching: req/s at 32", "small_batch_rps_top", "{:.0f}"),
            ("large, batching: req/s at 32", "large_batch_rps_top", "{:.0f}"),
            ("large: batching vs none at 32 (target ≥ 3×)", "large_batching_speedup_top", "{:.2f}×"),
            ("errors", "errors_total", "{}"),
        ],
    ),
    "minilm_curve": (
        "minilm_curve",
        "points",
        [
            ("training sentences", "train_sentences", "{:,}"),
            ("epochs", "epochs", "{}"),
            ("training time (s)", "train_s", "{:.0f}"),
            ("cos mean (held-out)", "cos_mean", "{:.4f}"),
            ("cos min", "cos_min", "{:.4f}"),
            ("top-1 agree", "top1_agree", "{:.3f}"),
        ],
    ),
    "nncf_settings": (
        "nncf_settings",
        "variants",
        [
            ("variant", "name", "{}"),
            ("embedding tables", "embedding", "{}"),
            ("size", "size_bytes", lambda v: f"{v / 1e6:.2f} MB"),
            ("b1 latency, 2 thr (ms)", "latency_ms_b1_t2", "{:.2f}"),
            ("b32 throughput, 2 thr (/s)", "throughput_b32_t2", "{:.1f}"),
            ("cos mean", "cos_mean", "{:.4f}"),
            ("cos min", "cos_min", "{:.4f}"),
        ],
    ),
    "minilm_variants": (
        "minilm",
        "variants",
        [
            *VARIANT_SPEED,
            ("cos mean", "cos_mean", "{:.4f}"),
            ("cos min", "cos_min", "{:.4f}"),
            ("top-1 agree", "top1_agree", "{:.3f}"),
            ("verdict", "", _mark),
        ],
    ),
}


def render_list(table: str, figures: dict) -> str:
    """A LISTS table: one row per item of the figure's list, then the command and machine."""
    name, path, cols = LISTS[table]
    entry = figures.get(name)
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * len(cols)]
    try:
        items = _get(entry["measured"], path) if entry else []
    except (KeyError, IndexError, TypeError):
        items = []
    for item in items:
        cells = [
            fmt(item if not key else item.get(key))
            if callable(fmt)
            else "–"
            if item.get(key) is None
            else str(fmt).format(item[key])
            for _, key, fmt in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not items:
        lines.append("| not measured |" + " |" * (len(cols) - 1))
    return "\n".join(lines + ([""] + [f"- `{' '.join(entry['command'])}`: {_where(entry)}"] if entry else []))


TYPED = re.compile(
    r"^\**[-+−]?\d[\d,]*(\.\d+)?\s*(%|×|ms|s|/s|MB|KiB|kB|B|points|min)?\**$|\d\.\d+\s*(%|×|ms\b|/s|MB|KiB|kB|points)"
)


def typed_rows(text: str) -> list[str]:
    """Table rows of ``text`` that hold a measured-looking number (a bare figure, or a decimal with a
    unit, e.g. ``14.6``, ``90.9 MB``, ``4.41×``): a figure typed by hand unless it is inside markers."""
    rows = [ln for ln in text.splitlines() if ln.startswith("|") and not set(ln) <= set("|-: ")]
    return [ln for ln in rows if any(TYPED.search(c.strip()) for c in ln.strip("|").split("|"))]


def _get(obj, dotted: str):
    """The value at ``dotted`` (``#`` as the last part: the length of the list or object there)."""
    for part in dotted.split("."):
        obj = len(obj) if part == "#" else obj[int(part)] if isinstance(obj, list) else obj[part]
    return obj


def _values(measured: dict, paths: str) -> list:
    """The values at one or more comma-separated paths, intervals (``[low, high]``) spread out, so a
    format such as ``{:.3f} [{:.3f}, {:.3f}] ({} seeds)`` takes a mean, its interval and a count."""
    out: list = []
    for path in (p.strip() for p in paths.split(",")):
        value = _get(measured, path)
        if isinstance(value, list) and any(v is None for v in value):
            raise ValueError(path)
        out += value if isinstance(value, list) else [value]
    return out


def verdict(ci: list) -> str:
    """A conclusion only where the 95% interval of a difference supports it."""
    low, high = ci
    f = "{:+,.0f}" if max(abs(low), abs(high)) >= 1000 else "{:+.2f}"  # throughputs: whole samples/s
    span = f"[{f.format(low)}, {f.format(high)}]"
    if low > 0 or high < 0:
        word = "higher" if low > 0 else "lower"
        return f"{word}: 95% interval {span} excludes 0"
    return f"not distinguishable: 95% interval {span} includes 0"


def cell(entry: dict | None, path: str, fmt: str) -> str:
    """One measured cell: ``fmt`` of the values at ``path``, ``verdict`` of an interval, or "not measured".
    ``A || B`` in both path and format: B's when A's values are missing (a figure measured before its
    interval was)."""
    if " || " in path:
        (path, fallback), (fmt, fallback_fmt) = path.split(" || ", 1), fmt.split(" || ", 1)
        first = cell(entry, path, fmt)
        return first if first != "not measured" else cell(entry, fallback, fallback_fmt)
    try:
        values = _values(entry["measured"], path) if entry else None
        if values is None:
            return "not measured"
        return verdict(values) if fmt == "verdict" else fmt.format(*values)
    except (KeyError, IndexError, TypeError, ValueError):
        return "not measured"


def _where(entry: dict) -> str:
    machine = entry["measured"].get("machine", {})
    if isinstance(machine, str):  # tasks.runtime.hardware.describe(): CPU, cores and threads in one line
        return f"{machine}, {entry['measured'].get('threads', '?')} thread(s), {entry.get('date', '?')}"
    m = {**machine, **entry["measured"]}
    threads = f", {m['threads']} thread(s)" if m.get("threads") is not None else ""
    cores = m.get("cpus", m.get("cores", "?"))
    return f"{m.get('cpu_model', '?')}, {cores} cores{threads}, {m.get('date', entry.get('date', '?'))}"


def render(table: str, figures: dict) -> str:
    """The Markdown of one README block: the table, then the command and machine of each figure."""
    if table in LISTS:
        return render_list(table, figures)
    lines = [HEADER, "|---|---|---|"]
    used: list[str] = []
    for label, name, path, fmt, target in TABLES[table]:
        entry = figures.get(name)
        lines.append(f"| {label} | {cell(entry, path, fmt)} | {target} |")
        if entry and name not in used:
            used.append(name)
    lines.append("")
    for name in used:
        lines.append(f"- `{' '.join(figures[name]['command'])}`: {_where(figures[name])}")
    return "\n".join(lines)


def rewrite(text: str, figures: dict) -> str:
    """``text`` with every figures block it holds rendered from ``figures``."""
    for table in [*TABLES, *LISTS]:
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
        out += [
            f"{name}: no table '{b}' in benchmarks/figures.py" for b in blocks if b not in TABLES and b not in LISTS
        ]
        if rewrite(text, figures) != text:
            out.append(f"{name}: figures differ from docs/figures.json: run `make figures`")
        outside = re.sub(r"<!-- figures:(\S+) -->\n.*?<!-- /figures:\1 -->", "", text, flags=re.DOTALL)
        if HEADER in outside:
            out.append(f"{name}: a figures table outside <!-- figures:TABLE --> markers")
        out += [
            f"{name}: a figure typed by hand outside <!-- figures:TABLE --> markers: {r[:80]}"
            for r in typed_rows(outside)
        ]
    return out + [f"table '{t}' is in no document (README.md, docs/*.md)" for t in [*TABLES, *LISTS] if t not in held]


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

    for name in names:
        cmd = FIGURES[name]
        print(f"[figures] {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        done = launch.run(cmd, ROOT, timeout=4 * 3600, echo_stderr=True).check()  # progress shows
        measured = last_json(done.stdout, name)
        figures = load()  # re-read: another `run` may have stored its figure meanwhile
        figures[name] = {"command": cmd, "date": time.strftime("%Y-%m-%d"), "measured": measured}
        STORE.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")  # after each: keep what ran


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("action", choices=["run", "readme", "check"])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--long", action="store_true", help=f"with --all: also {sorted(LONG)}")
    args = ap.parse_args()
    if args.action == "run":
        unknown = [n for n in args.names if n not in FIGURES]
        if unknown or not (args.names or args.all):
            print(f"error: name one or more of {sorted(FIGURES)} or --all (unknown: {unknown})", file=sys.stderr)
            return 2
        run([n for n in FIGURES if args.long or n not in LONG] if args.all else args.names)
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
