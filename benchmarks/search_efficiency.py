"""Search vs grid vs random search on MNIST-1D, under one accuracy budget (1 point).

For each seed, in one process on one local Ray and one MLflow experiment (one cache):
1. the prefix (data, teacher, teacher_logits) is computed first (untimed; every method reads it
   from the cache). Methods run in the order grid, search, random; a later one reuses a chain
   step an earlier one computed with the same settings (same key, same output), which shortens
   its `wall_s` but cannot change its results;
2. **grid**: the compress pipeline's chain (KD sweep -> prune sweep -> export -> INT8 ->
   benchmark -> report), its trained candidates = KD trials + prune trials;
3. **search**: `pipeline=search` (Optuna TPE, constraint-aware) with as many trials as the
   grid has trained candidates; 4. **random**: the same space and budget, random sampling.

One bound for all methods: val_acc >= B = (the grid's selected KD student's val_acc) - 0.01,
the grid's own rule. Candidates: the grid's benchmarked models (its selected KD student, every
pruned model and the INT8 model); each search trial's deployed (INT8) model. After the three
methods, every candidate of every method and the teacher are measured again together in one
benchmark (``retime.remeasure``: validation accuracy on ONNX Runtime, throughput at batch 256 on
one thread in 3 rounds over all candidates in turn), so no method's figures carry the load under
which it was trained: the pipeline's benchmark times its models alone, a search trial times its
model while the next trial trains. Per method: the best throughput of a candidate with
val_acc >= B (0 when none), and the hypervolume of (val_acc, log10 throughput) over its
candidates with the reference point (B - 0.05, log10 teacher throughput): the area of "nearly
feasible and faster than the teacher". Budgets are the smoke ones (conf/experiment/smoke.yaml).
The default grid has 24 trained candidates: 6 KD students (temperature 1, 2, 4 x alpha 0.5, 0.9,
inside the search space's choices) and 18 pruned models (channel and magnitude x 9 amounts from
0.2 to 0.8, the search space's range); the searches get the same 24 trials, of which TPE spends
a third on its random start-up. `--quick` uses the smoke grid (2 KD x 2 prune = 4 candidates).

Over ``--seeds N`` (default 5) each method's mean comes with its 95% t-interval (``*_ci95``);
``comparisons`` holds the per-seed paired differences (search vs grid, search vs random) with
their intervals and a verdict that states a difference only where the interval excludes 0; and
``<search|random>.candidates_to_95pct_of_grid_best`` counts the trials (stopped ones included)
the method needed, in the order they started, to reach 95% of the grid's best feasible
throughput of the same seed (None: never).

    .venv/bin/python benchmarks/search_efficiency.py [--quick] [--seeds N]

Prints ONE JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import launch  # benchmarks/ is the script's directory
from machine import machine_info
from retime import TIMING, Candidate, child_step_run, remeasure
from search_compare import BUDGET, FULL_GRID, GRID_CHAIN, candidates_to, points_of, score
from seeded import add_seeds, mean_ci

launch.quiet_here()  # here and in the Ray workers started from here

from mlflow.tracking import MlflowClient  # noqa: E402
from rich.console import Console  # noqa: E402

from pipelines import search  # noqa: E402
from pipelines.config.compose import load_config  # noqa: E402
from pipelines.config.spec import build_spec  # noqa: E402
from pipelines.run import session  # noqa: E402
from pipelines.search.trial import run_spec  # noqa: E402


def common(wd: Path, seed: int, method: str) -> list[str]:
    return [f"seed={seed}", f"tracking.uri=sqlite:///{wd}/mlflow.db", "tracking.experiment=bench"]


def prefix(wd: Path, seed: int, method: str) -> None:
    from pipelines.run.dag import Context
    from pipelines.store.tracking import create_run, ensure_experiment, resolve_uri

    cfg = load_config(["experiment=search", *common(wd, seed, method)])
    plan = search.plan_of(cfg)
    spec = build_spec({"name": "bench", "steps": {n: plan.steps[n] for n in plan.prefix}})
    uri = resolve_uri(cfg.tracking.uri)
    client = MlflowClient(uri)
    exp = ensure_experiment(client, "bench")
    run = create_run(client, exp, "prefix", None, {})
    import ray

    run_spec(client, Context(uri, exp, run, seed, ""), spec, True, [], ray.get_runtime_context().get_node_id())
    client.set_terminated(run)


def grid(wd: Path, seed: int, quick: bool, quiet: Console) -> dict:
    overrides = ["experiment=smoke", *common(wd, seed, "grid"), *GRID_CHAIN, *([] if quick else FULL_GRID)]
    cfg = load_config(overrides)
    spec, ray_cfg, tracking = session.validate(cfg)
    t0 = time.perf_counter()
    out = session.execute(cfg, spec, ray_cfg, tracking, overrides, quiet)
    wall = time.perf_counter() - t0
    run_of = lambda name, i: out.states[name].trials[i].meta.run_id  # noqa: E731
    kd = out.states["student_kd"]
    models = [("student_kd", kd.selected)] + [("prune", i) for i in range(len(out.states["prune"].trials))]
    models.append(("quantize", 0))
    candidates = [
        Candidate("grid", out.states[n].trials[i].label or n, run_of(n, i), k) for k, (n, i) in enumerate(models)
    ]
    return {
        "wall_s": wall,
        "candidates": candidates,
        "trained_candidates": len(kd.trials) + len(out.states["prune"].trials),
        "reference": kd.summary["val_acc"],
        "teacher": Candidate("teacher", "teacher", run_of("teacher", 0), 0),
        "data_run": run_of("data", 0),
        "experiment_id": out.experiment_id,
        "uri": out.uri,
    }


def searched(wd: Path, seed: int, algorithm: str, n: int, reference: float, quiet: Console) -> dict:
    from pipelines.search.driver import execute

    overrides = [
        "experiment=search",
        *common(wd, seed, algorithm),
        f"pipeline.search.algorithm={algorithm}",
        f"pipeline.search.num_samples={n}",
        f"pipeline.search.startup_trials={max(1, n // 3)}",
        f"pipeline.search.constraint.reference_value={reference}",
        f"pipeline.search.constraint.budget={BUDGET}",
        f"pipeline.search.storage={wd}/tune-{algorithm}",
    ]
    cfg = load_config(overrides)
    spec, ray_cfg, tracking = session.validate(cfg)
    t0 = time.perf_counter()
    out = execute(cfg, spec, search.plan_of(cfg), ray_cfg, tracking, overrides, quiet)
    wall = time.perf_counter() - t0
    client = MlflowClient(out.uri)
    table = json.loads(
        Path(client.download_artifacts(out.run_id, "search/trials.json", str(wd / algorithm))).read_text()
    )
    # trials in the order they started: the order in which the sampler spent its budget
    trials = sorted(table["trials"], key=lambda r: client.get_run(r["run_id"]).info.start_time)
    method = "search" if algorithm == "tpe" else "random"
    candidates = []
    for k, r in enumerate(trials):
        deployed = child_step_run(client, out.experiment_id, r["run_id"], "quantize")
        if r["status"] == "finished" and deployed is not None:
            candidates.append(Candidate(method, r["trial_id"], deployed, k))
    return {
        "wall_s": wall,
        "candidates": candidates,
        "trained_candidates": len(trials),
        "stopped_early": sum(r["status"] == "stopped" for r in trials),
        "exit_code": out.exit_code,
    }


def summarize(per_seed: dict[str, list[dict]]) -> tuple[dict, dict]:
    """(methods: mean and 95% interval per figure, comparisons: paired per-seed differences)."""
    methods = {
        name: {
            **mean_ci("best_feasible_throughput", (r["best_feasible_throughput"] for r in rows)),
            **mean_ci("hypervolume", (r["hypervolume"] for r in rows)),
            "trained_candidates": rows[0]["trained_candidates"],
            **mean_ci("wall_s", (r["wall_s"] for r in rows)),
            "per_seed": [{k: v for k, v in r.items() if k != "best_so_far"} for r in rows],
        }
        for name, rows in per_seed.items()
    }
    search, grid, rand = per_seed["search"], per_seed["grid"], per_seed["random"]
    for name, rows in (("search", search), ("random", rand)):
        need = [candidates_to(s["best_so_far"], 0.95 * g["best_feasible_throughput"]) for s, g in zip(rows, grid)]
        methods[name]["candidates_to_95pct_of_grid_best"] = {
            "per_seed": need,
            "reached": sum(n is not None for n in need),
            "max": max((n for n in need if n is not None), default=None),
            "mean": statistics.mean(n for n in need if n is not None) if any(n is not None for n in need) else None,
            "grid_candidates": grid[0]["trained_candidates"],
        }
    ratio = lambda a, b: a / b if b > 0 else math.nan  # noqa: E731
    comparisons = {
        "search_vs_grid": {
            **mean_ci(
                "throughput_ratio",
                (ratio(s["best_feasible_throughput"], g["best_feasible_throughput"]) for s, g in zip(search, grid)),
            ),
            **mean_ci("hypervolume_diff", (s["hypervolume"] - g["hypervolume"] for s, g in zip(search, grid))),
            **mean_ci(
                "throughput_diff",
                (s["best_feasible_throughput"] - g["best_feasible_throughput"] for s, g in zip(search, grid)),
            ),
        },
        "search_vs_random": {
            **mean_ci(
                "throughput_ratio",
                (ratio(s["best_feasible_throughput"], r["best_feasible_throughput"]) for s, r in zip(search, rand)),
            ),
            **mean_ci("hypervolume_diff", (s["hypervolume"] - r["hypervolume"] for s, r in zip(search, rand))),
            **mean_ci(
                "throughput_diff",
                (s["best_feasible_throughput"] - r["best_feasible_throughput"] for s, r in zip(search, rand)),
            ),
        },
    }
    return methods, comparisons


def main() -> None:
    ap = argparse.ArgumentParser()
    add_seeds(ap)
    ap.add_argument("--quick", action="store_true", help="the smoke grid (4 candidates), 4 trials per search")
    args = ap.parse_args()
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    quiet = Console(file=open(os.devnull, "w"), stderr=False)
    per_seed: dict[str, list[dict]] = {"search": [], "grid": [], "random": []}
    keep = tempfile.TemporaryDirectory(prefix="search-eff-")  # removed at the end: workers hold sqlite handles
    for seed in args.seeds:
        wd = Path(keep.name) / f"seed-{seed}"
        wd.mkdir()
        prefix(wd, seed, "all")
        g = grid(wd, seed, args.quick, quiet)
        bound = g["reference"] - BUDGET
        runs = {"grid": g}
        for algorithm in ("tpe", "random"):
            runs["search" if algorithm == "tpe" else "random"] = searched(
                wd, seed, algorithm, g["trained_candidates"], g["reference"], quiet
            )
        # every method's models (and the teacher) measured again in one benchmark: like for like
        every = [g["teacher"], *(c for res in runs.values() for c in res["candidates"])]
        rows = remeasure(MlflowClient(g["uri"]), g["experiment_id"], g["data_run"], every)
        teacher = next(r for r in rows if r["method"] == "teacher")
        ref = (bound - 0.05, math.log10(teacher["throughput_b256"]))
        for name, res in runs.items():
            points = points_of(res, [r for r in rows if r["method"] == name])
            per_seed[name].append(
                {
                    "seed": seed,
                    "bound": bound,
                    "teacher_throughput": teacher["throughput_b256"],
                    **score(points, bound, ref),
                    **{k: v for k, v in res.items() if k in ("wall_s", "trained_candidates", "stopped_early")},
                    "measured": [r for r in rows if r["method"] == name],
                }
            )
        print(json.dumps({"seed": seed, **{k: v[-1] for k, v in per_seed.items()}}), file=sys.stderr)
    ray.shutdown()
    keep.cleanup()
    methods, comparisons = summarize(per_seed)
    print(
        json.dumps(
            {
                "budget_points": BUDGET * 100,
                "seeds": len(args.seeds),
                "mode": "quick" if args.quick else "full",
                "methods": methods,
                "comparisons": comparisons,
                "timing": {"threads": TIMING.threads, "rounds": TIMING.rounds, "batch": TIMING.throughput_batch},
                "machine": machine_info(threads=TIMING.threads),
                **machine_info(threads=TIMING.threads),  # also flat: benchmarks/figures.py names the machine from these
            }
        )
    )


if __name__ == "__main__":
    main()
