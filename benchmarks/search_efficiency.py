"""Search vs grid vs random search on MNIST-1D, under one accuracy budget (1 point).

For each seed, in one process on one local Ray and one MLflow experiment (one cache):
1. the prefix (data, teacher, teacher_logits) is computed first (untimed; every method reads it
   from the cache). Methods run in the order grid, search, random; a later one reuses a chain
   step an earlier one computed with the same settings (same key, same output), which shortens
   its `wall_s` but cannot change its results; `trained_models` counts what each computed;
2. **grid**: the compress pipeline's chain (KD sweep -> prune sweep -> export -> INT8 ->
   benchmark -> report), its trained candidates = KD trials + prune trials;
3. **search**: `pipeline=search` (Optuna TPE, constraint-aware) with as many trials as the
   grid has trained candidates; 4. **random**: the same space and budget, random sampling.

One bound for all methods: val_acc >= B = (the grid's selected KD student's val_acc) - 0.01,
the grid's own rule. Per method: the best throughput (batch 256, ONNX Runtime, one thread) of a
measured deployable candidate with val_acc >= B (0 when none), and the hypervolume of
(val_acc, log10 throughput) over its candidates with the reference point
(B - 0.05, log10 teacher throughput): the area of "nearly feasible and faster than the teacher".
Candidates: the grid's benchmarked models (every KD/pruned/INT8 row but the teacher); a search's
trials' deployed models. Budgets are the smoke ones (conf/experiment/smoke.yaml). The default grid
has 24 trained candidates: 6 KD students (temperature 1, 2, 4 x alpha 0.5, 0.9, inside the
search space's choices) and 18 pruned models (channel and magnitude x 9 amounts from 0.2 to 0.8,
the search space's range); the searches get the same 24 trials, of which TPE spends a third on
its random start-up. `--quick` uses the smoke grid (2 KD x 2 prune = 4 candidates) instead.

Over ``--seeds N`` (default 5) each method's mean comes with its 95% t-interval (``*_ci95``);
``comparisons`` holds the per-seed paired differences (search vs grid, search vs random) with
their intervals and a verdict that states a difference only where the interval excludes 0; and
``search.candidates_to_95pct_of_grid_best`` counts the trials search needed, in trial order, to
reach 95% of the grid's best feasible throughput of the same seed (None: never).

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
from seeded import add_seeds, mean_ci

launch.quiet_here()  # here and in the Ray workers started from here

from mlflow.tracking import MlflowClient  # noqa: E402
from rich.console import Console  # noqa: E402

from pipelines import search  # noqa: E402
from pipelines.config.compose import load_config  # noqa: E402
from pipelines.config.spec import build_spec  # noqa: E402
from pipelines.run import session  # noqa: E402
from pipelines.search.pareto import hypervolume  # noqa: E402
from pipelines.search.trial import run_spec  # noqa: E402

BUDGET = 0.01
AMOUNTS = [round(0.2 + 0.075 * i, 3) for i in range(9)]  # 0.2 .. 0.8, the search space's range
FULL_GRID = [  # 6 KD + 2 x 9 prune = 24 trained candidates
    "pipeline.steps.student_kd.sweep={params.temperature: [1.0, 2.0, 4.0], params.alpha: [0.5, 0.9]}",
    "pipeline.steps.prune.sweep={params.method: [channel, magnitude], params.amount: " + str(AMOUNTS) + "}",
]
GRID_CHAIN = [  # the compress chain only: no scratch / mutual baselines, no simulated k-bit models
    "~pipeline.steps.scratch",
    "~pipeline.steps.student_mutual",
    "~pipeline.steps.kbit",
    "~pipeline.steps.report.inputs.kbit",
    "pipeline.steps.benchmark.inputs.models=[teacher,student_kd,'prune[*]',quantize]",
]


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
    client = MlflowClient(out.uri)
    bench = out.states["benchmark"].trials[0].meta.run_id
    src = client.get_run(bench).data.tags.get("slimray.cache_source", bench)
    rows = json.loads(Path(client.download_artifacts(src, "benchmark.json", str(wd))).read_text())["candidates"]
    teacher = next(r for r in rows if r["kind"] == "teacher")
    points = [(r["val_acc"], r["throughput_b256"]) for r in rows if r["kind"] != "teacher"]
    trained = len(out.states["student_kd"].trials) + len(out.states["prune"].trials)
    return {
        "wall_s": wall,
        "points": points,
        "trained_candidates": trained,
        "reference": out.states["student_kd"].summary["val_acc"],
        "teacher_throughput": teacher["throughput_b256"],
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
    t0, started = time.perf_counter(), int(time.time() * 1000)
    out = execute(cfg, spec, search.plan_of(cfg), ray_cfg, tracking, overrides, quiet)
    wall = time.perf_counter() - t0
    client = MlflowClient(out.uri)
    table = json.loads(
        Path(client.download_artifacts(out.run_id, "search/trials.json", str(wd / algorithm))).read_text()
    )
    points = [
        (r["metrics"]["val_acc"], r["metrics"]["throughput"])
        for r in table["trials"]
        if r["status"] == "finished" and "throughput" in r["metrics"]
    ]
    computed = client.search_runs(
        [out.experiment_id], filter_string="tags.`slimray.cached` = 'false'", max_results=5000
    )
    trained = [
        r for r in computed if r.data.tags.get("slimray.task") in ("distill", "prune") and r.info.start_time >= started
    ]
    return {
        "wall_s": wall,
        "points": points,
        "trained_candidates": len(table["trials"]),
        "trained_models": len(trained),
        "exit_code": out.exit_code,
    }


def score(res: dict, bound: float, ref: tuple[float, float]) -> dict:
    feasible = [t for a, t in res["points"] if a >= bound]
    return {
        "best_feasible_throughput": max(feasible, default=0.0),
        "feasible": len(feasible),
        "hypervolume": hypervolume([(a, math.log10(t)) for a, t in res["points"] if t > 0], ref),
        "best_so_far": list(_best_so_far(res["points"], bound)),
    }


def _best_so_far(points: list[tuple[float, float]], bound: float):
    best = 0.0
    for a, t in points:
        best = max(best, t) if a >= bound else best
        yield best


def candidates_to(best_so_far: list[float], target: float) -> int | None:
    """How many candidates, in order, until the best feasible throughput reaches ``target`` (None: never)."""
    return next((i + 1 for i, b in enumerate(best_so_far) if target > 0 and b >= target), None)


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
    need = [candidates_to(s["best_so_far"], 0.95 * g["best_feasible_throughput"]) for s, g in zip(search, grid)]
    methods["search"]["candidates_to_95pct_of_grid_best"] = {
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
        ref = (bound - 0.05, math.log10(g["teacher_throughput"]))
        runs = {"grid": g}
        for algorithm in ("tpe", "random"):
            runs["search" if algorithm == "tpe" else "random"] = searched(
                wd, seed, algorithm, g["trained_candidates"], g["reference"], quiet
            )
        for name, res in runs.items():
            per_seed[name].append(
                {
                    "seed": seed,
                    "bound": bound,
                    **score(res, bound, ref),
                    **{k: v for k, v in res.items() if k not in ("points", "reference")},
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
                "machine": machine_info(threads=2),
                **machine_info(threads=2),  # also flat: benchmarks/figures.py names the machine from these
            }
        )
    )


if __name__ == "__main__":
    main()
