"""Batch inference on Ray Data (pipelines/scale/batch.py) against the actor-chain pool
(pipelines/scale/pool.py, ``ChainPool``), a plain in-process loop and the two-process ceiling.
The engine runs one stage on Ray Data and ``K >= 2`` stages on the pool (``pp2_engine``), the
choice these figures back.

    .venv/bin/python benchmarks/parallel_inference.py [--rows 400000] [--pp-rows 8192] [--rounds 3]

Prints ONE JSON object on stdout (progress, and whatever Ray prints, on stderr). CPU actors and
processes run one torch thread each (``--threads``). Two models:

- small: MLP 40-512x4-10 over ``rows`` rows in batches of ``--batch`` (8192) rows;
- heavy: the zoo's deep MLP (conf/model/mlp_deep.yaml, 40-2048x9-10, ~34M parameters) over
  ``pp_rows`` rows in micro-batches of ``--micro-batch`` (256).

One model's configurations all use the same batch size (plain loop, pool, Ray Data, ceiling), and
Ray Data's blocks are one batch each. The batches are large because Ray Data costs ~10-20 ms per
block on a slow 2-core machine: a small block would measure that overhead, not the engine's
throughput on real work.

How each figure is measured:

- ``plain_rows_per_s``: the small model in this process, one pass over the rows after a warm-up.
- The ceiling (``ceiling_two_procs_small``, ``ceiling_two_procs_heavy``): two spawned processes
  run the plain loop at the same time (benchmarks/plain_procs.py; model loaded and warmed up
  before a barrier), against one such process alone: (combined rows/s of two) / (rows/s of one).
  One process makes one pass over the rows; the two then loop for as long as it took, and each
  counts the batches it finished while the other was still running.
- Ray Data (``single_*``, ``dp2_*``, ``pp2_*``, ``pp2_unsplit_*``, ``pp_model_dp2_*``): one
  ``batch.run`` each. Its actors exist only during one execution, so the rate that leaves out
  actor start-up (model loading) is ``steady_rows_per_s`` of its summary: rows over the span from
  the first block started to the last block finished, every scheduling gap between included (an
  actor's first block is its first call: there is no separate warm-up). ``*_wall_rows_per_s`` is
  rows over the whole call (actor start-up included) and ``*_startup_s`` the wall time outside
  that span (actors started and models loaded before it, the last output collected after it), so
  nothing is hidden.
- Before the rounds, one untimed Ray Data execution (4 blocks, 2 replicas): a driver's first
  execution also starts Ray Data's own helper actors, which would slow whichever run came first.
- The pool (``pool_*``): ``ChainPool`` built (``pool_*_startup_s``), warmed up on a few batches,
  then rows over the wall time of one ``map`` (start-up excluded, as this file always measured).
  That wall time also holds the hand-off of the first batch and of the last output, which Ray
  Data's busy span does not: the comparison leans, if anything, towards Ray Data by that much.
- Ratios: ``ratio_dp2_vs_single`` (2 Ray Data replicas vs 1, small model),
  ``ceiling_two_actors_vs_one_pp_model`` (the same on the heavy model), ``dp2_vs_ceiling`` and
  ``dp2_vs_ceiling_heavy`` (those as a share of the ceiling on the same model),
  ``one_replica_vs_plain`` (= ``ratio_single_vs_plain``), ``ray_data_vs_pool_{single,dp2,pp2}``,
  ``ratio_pp2_vs_unsplit`` (2 stages balanced by measured module time vs the whole heavy model on
  one actor, both on the pool: the engine's pipeline-parallel path) with ``max_abs_diff`` between
  their outputs, and ``ray_data_pp2_vs_unsplit`` (the same on Ray Data).
- Priority: Ray starts its workers (the actors of both engines) at niceness 15, so the plain loops
  (the in-process one, in a thread of its own, and the ceiling's processes) run at that niceness
  too (``--niceness``): other load on the machine then takes the same share from every measured
  loop, instead of starving the actors alone.
- The machine is shared and noisy: every configuration is measured ``--rounds`` times,
  interleaved (round 1 of all, then round 2, ...), and each reported rate is the MEDIAN of its
  rounds; ratios are ratios of those medians. ``samples`` holds every round's rate.
- Fault tolerance: a Ray Data run of the small model on 2 replicas in which one stage actor is
  SIGKILLed once ~40% of the blocks have started (its pid recorded by the factory in a temporary
  folder): ``rows_lost`` (rows missing or off the plain loop's outputs by > 1e-5),
  ``rows_duplicated``, ``kill_restarts``, ``kill_resubmitted_batches`` (blocks started twice),
  ``kill_at_block`` (blocks started when the kill landed; -1: the run had ended, use more rows).

Targets (2 cores): dp2 vs 1 replica >= 95% of the ceiling on both models, 1 replica vs plain
>= 0.95x, Ray Data vs the pool >= 0.9x on the same work, 2 stages vs unsplit >= 1.7x with identical
outputs, 0 rows lost and 0 duplicated.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from plain_procs import inputs, lower_priority, mlp, plain_processes  # noqa: E402

from pipelines.scale import batch as ray_batch  # noqa: E402
from pipelines.scale.pool import ChainPool  # noqa: E402
from tasks.models.build import load_model  # noqa: E402
from tasks.steps.inference import Predictor, plan_stages  # noqa: E402

SMALL, HEAVY = [512] * 4, [2048] * 9
RAY_WORKER_NICENESS = 15  # Ray starts its worker processes (actors) at this niceness


def log(msg: str) -> None:
    print(f"[parallel_inference] {msg}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next(
        (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), platform.processor()
    )


def wait_idle(timeout_s: float = 60.0) -> None:
    """Wait until the previous run's actors are gone (all CPUs free again) before measuring the next."""
    import ray

    deadline, cpus = time.monotonic() + timeout_s, ray.cluster_resources().get("CPU", 0.0)
    while ray.available_resources().get("CPU", 0.0) < cpus and time.monotonic() < deadline:
        time.sleep(0.2)


def plain(art, x: torch.Tensor, batch: int, threads: int, niceness: int) -> tuple[float, torch.Tensor]:
    """(rows/s, outputs) of one pass of the in-process loop, after a warm-up batch, in a thread at
    ``niceness`` (the driver itself keeps its priority for Ray's work)."""
    torch.set_num_threads(threads)
    model = load_model(art)
    got: dict[str, Any] = {}

    def loop() -> None:
        lower_priority(niceness, threading.get_native_id())
        with torch.no_grad():
            model(x[:batch])
            t = time.perf_counter()
            out = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
            got.update(s=time.perf_counter() - t, out=out)

    runner = threading.Thread(target=loop)
    runner.start()
    runner.join()
    return len(x) / got["s"], got["out"]


def ceiling(hidden: list[int], rows: int, batch: int, threads: int, seed: int, niceness: int) -> tuple[float, float]:
    """(rows/s of one plain process alone, combined rows/s of two at once), same loop and batch."""
    opts = {"seed": seed, "threads": threads, "niceness": niceness}
    one, took = plain_processes(1, hidden, rows, batch, **opts)
    two, _ = plain_processes(2, hidden, rows, batch, duration_s=took, **opts)
    return one, two


def on_ray_data(stage_fns, x: torch.Tensor, batch: int, replicas: int, threads: int) -> tuple[dict, np.ndarray]:
    """One ``batch.run``: its steady and wall rates, start-up, bubble fraction; and its outputs."""
    wait_idle()
    r = ray_batch.run(stage_fns, x, batch_size=batch, replicas=replicas, num_cpus=threads)
    s = r.summary
    figures = {
        "steady": s["steady_rows_per_s"],
        "wall": s["rows_per_s"],
        "startup": s["wall_s"] - s["busy_span_s"],
        "bubble": s["bubble_fraction"],
    }
    return figures, r.out


def on_pool(stage_fns, x: np.ndarray, batch: int, replicas: int, threads: int) -> tuple[dict, np.ndarray]:
    """One ``ChainPool`` run: rows/s of ``map`` after a warm-up, start-up; and its outputs."""
    wait_idle()
    t = time.perf_counter()
    pool = ChainPool(stage_fns, replicas, num_cpus=threads)
    startup = time.perf_counter() - t
    try:
        pool.map(x[: batch * replicas * 2], batch)  # warm-up: first calls on every actor
        out, stats = pool.map(x, batch)
    finally:
        pool.shutdown()
    return {"steady": stats.rows / stats.wall_s, "startup": startup}, out


class PidRecording:
    """A stage factory that leaves its actor's pid in ``folder`` and appends each block's key (its
    first input value) to that file when the block starts: which actor to kill, and which blocks ran twice."""

    def __init__(self, make_fn, folder: Path):
        self.make_fn, self.folder = make_fn, folder

    def __call__(self):
        fn, path = self.make_fn(), self.folder / str(os.getpid())
        path.touch()

        def apply(xb: torch.Tensor) -> torch.Tensor:
            with path.open("a") as f:
                f.write(f"{float(xb[0, 0])!r}\n")
            return fn(xb)

        return apply


def kill_run(make_fn, x: torch.Tensor, ref: torch.Tensor, batch: int, threads: int) -> dict:
    """2 Ray Data replicas; one stage actor SIGKILLed once ~40% of the blocks have started."""
    wait_idle()
    blocks = -(-len(x) // batch)
    with tempfile.TemporaryDirectory() as tmp:
        folder, result = Path(tmp), {}

        def work():
            try:
                stage = [PidRecording(make_fn, folder)]
                result["r"] = ray_batch.run(stage, x, batch_size=batch, replicas=2, num_cpus=threads)
            except RuntimeError as e:  # rows missing after the kill: counted below
                result["error"] = str(e)

        runner = threading.Thread(target=work)
        runner.start()
        deadline = time.monotonic() + 300

        def started() -> list[str]:
            return [k for p in folder.iterdir() for k in p.read_text().split()]

        while (len(list(folder.iterdir())) < 2 or len(started()) < 0.4 * blocks) and time.monotonic() < deadline:
            time.sleep(0.05)
        victim, at = int(sorted(p.name for p in folder.iterdir())[0]), len(started())
        try:
            os.kill(victim, signal.SIGKILL)
            log(f"kill run: SIGKILLed actor pid {victim} after {at} of {blocks} blocks started")
        except ProcessLookupError:  # the run ended first: the figures below are of a run without a kill
            at = -1
            log("kill run: the run ended before the kill (use more --rows)")
        runner.join()
        keys = started()
    resubmitted = len(keys) - len(set(keys))
    if "error" in result:
        missing = re.search(r"(\d+) of \d+ rows came back", result["error"])
        lost = int(missing.group(1)) if missing else len(x)
        return {
            "rows_lost": lost,
            "rows_duplicated": 0,
            "kill_restarts": -1,
            "kill_resubmitted_batches": resubmitted,
            "kill_at_block": at,
            "kill_error": result["error"],
        }
    r = result["r"]
    same = np.isclose(r.out, ref.numpy(), atol=1e-5).all(axis=1)
    return {
        "kill_at_block": at,
        "rows_lost": int(len(x) - same.sum()),
        "rows_duplicated": int(r.summary["duplicates_dropped"]),
        "kill_restarts": int(r.summary["restarts"]),
        "kill_resubmitted_batches": resubmitted,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=400_000, help="rows through the small MLP")
    ap.add_argument("--batch", type=int, default=8192, help="rows per batch (and per block), small MLP")
    ap.add_argument("--pp-rows", type=int, default=8192, help="rows through the heavy model")
    ap.add_argument("--micro-batch", type=int, default=256, help="rows per batch (and per block), heavy model")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurements of each configuration")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--niceness", type=int, default=RAY_WORKER_NICENESS, help="of the plain loops (as Ray workers)")
    args = ap.parse_args()
    if min(args.rows, args.batch, args.pp_rows, args.micro_batch, args.rounds, args.threads) < 1:
        ap.error("--rows, --batch, --pp-rows, --micro-batch, --rounds and --threads must be >= 1")
    import ray

    # stdout carries the JSON object only: whatever Ray or its processes print goes to stderr
    stdout = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    th, bs, mb = args.threads, args.batch, args.micro_batch
    res: dict = {
        "engine": "ray_data",
        "rows": args.rows,
        "pp_rows": args.pp_rows,
        "batch_size": bs,
        "micro_batch": mb,
        "threads": th,
        "niceness": args.niceness,
        "rounds": args.rounds,
        "statistic": "median of rounds (interleaved); ratios of medians",
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "dp_model": "MLP 40-512x4-10",
        "pp_model": "mlp_deep (MLP 40-2048x9-10)",
    }
    small, x = mlp(SMALL), inputs(args.rows, seed=1)
    deep, xp = mlp(HEAVY), inputs(args.pp_rows, seed=2)
    whole_small = [functools.partial(Predictor, small, "torch", "cpu", th)]
    whole = [functools.partial(Predictor, deep, "torch", "cpu", th)]
    spans = plan_stages(load_model(deep), 2, xp[:mb])
    stages = [functools.partial(Predictor, deep, "torch", "cpu", th, s) for s in spans]
    res["pp2_spans"] = [[int(a), int(b)] for a, b in spans]

    samples: dict[str, list[float]] = {}
    extra: dict[str, list[float]] = {}

    def keep(name: str, value: float, into: dict = samples) -> None:
        into.setdefault(name, []).append(value)
        if into is samples:
            log(f"  {name}: {value:,.0f} rows/s")

    def keep_ray(name: str, figures: dict) -> None:
        keep(name, figures["steady"])
        keep(f"{name}_wall", figures["wall"], extra)
        keep(f"{name}_startup_s", figures["startup"], extra)
        keep(f"{name}_bubble", figures["bubble"], extra)

    # untimed: the first Ray Data execution of a driver also starts Ray Data's own helper actors
    log("warm-up: one Ray Data execution (not measured)")
    on_ray_data(whole_small, x[: 4 * bs], bs, 2, th)
    ref = torch.empty(0)
    dp2_diff = pp2_diff = 0.0
    for rnd in range(1, args.rounds + 1):
        log(f"round {rnd}/{args.rounds}: small model ({args.rows} rows, batch {bs})")
        rate, ref = plain(small, x, bs, th, args.niceness)
        keep("plain", rate)
        one, two = ceiling(SMALL, args.rows, bs, th, 1, args.niceness)
        keep("ceiling_one_small", one)
        keep("ceiling_two_small", two)
        figs, _ = on_ray_data(whole_small, x, bs, 1, th)
        keep_ray("single", figs)
        figs, out = on_ray_data(whole_small, x, bs, 2, th)
        keep_ray("dp2", figs)
        dp2_diff = max(dp2_diff, float((torch.from_numpy(out) - ref).abs().max()))
        figs, _ = on_pool(whole_small, x.numpy(), bs, 1, th)
        keep("pool_single", figs["steady"])
        keep("pool_single_startup_s", figs["startup"], extra)
        figs, _ = on_pool(whole_small, x.numpy(), bs, 2, th)
        keep("pool_dp2", figs["steady"])
        keep("pool_dp2_startup_s", figs["startup"], extra)

        log(f"round {rnd}/{args.rounds}: heavy model ({args.pp_rows} rows, micro-batch {mb})")
        one, two = ceiling(HEAVY, args.pp_rows, mb, th, 2, args.niceness)
        keep("ceiling_one_heavy", one)
        keep("ceiling_two_heavy", two)
        figs, unsplit = on_ray_data(whole, xp, mb, 1, th)
        keep_ray("pp2_unsplit", figs)
        figs, _ = on_ray_data(whole, xp, mb, 2, th)
        keep_ray("pp_model_dp2", figs)
        figs, piped = on_ray_data(stages, xp, mb, 1, th)
        keep_ray("pp2", figs)
        pp2_diff = max(pp2_diff, float(np.abs(piped - unsplit).max()))
        figs, pooled = on_pool(stages, xp.numpy(), mb, 1, th)
        keep("pool_pp2", figs["steady"])
        pp2_diff = max(pp2_diff, float(np.abs(pooled - unsplit).max()))
        figs, _ = on_pool(whole, xp.numpy(), mb, 1, th)
        keep("pool_pp2_unsplit", figs["steady"])
        keep("pool_pp2_unsplit_startup_s", figs["startup"], extra)
        keep("pool_pp2_startup_s", figs["startup"], extra)

    med = {k: statistics.median(v) for k, v in {**samples, **extra}.items()}
    res["plain_rows_per_s"] = med["plain"]
    for name in ("single", "dp2", "pp2_unsplit", "pp_model_dp2", "pp2"):
        res[f"{name}_rows_per_s"] = med[name]
        res[f"{name}_wall_rows_per_s"] = med[f"{name}_wall"]
        res[f"{name}_startup_s"] = med[f"{name}_startup_s"]
    res["pp2_bubble_fraction"] = med["pp2_bubble"]
    for name in ("pool_single", "pool_dp2", "pool_pp2", "pool_pp2_unsplit"):
        res[f"{name}_rows_per_s"] = med[name]
        res[f"{name}_startup_s"] = med[f"{name}_startup_s"]
    for size in ("small", "heavy"):
        res[f"ceiling_one_proc_{size}_rows_per_s"] = med[f"ceiling_one_{size}"]
        res[f"ceiling_two_procs_{size}_rows_per_s"] = med[f"ceiling_two_{size}"]
        res[f"ceiling_two_procs_{size}"] = med[f"ceiling_two_{size}"] / med[f"ceiling_one_{size}"]
    res["dp2_max_abs_diff"] = dp2_diff
    res["max_abs_diff"] = pp2_diff
    res["ratio_dp2_vs_single"] = res["dp2_rows_per_s"] / res["single_rows_per_s"]
    res["ratio_single_vs_plain"] = res["one_replica_vs_plain"] = res["single_rows_per_s"] / res["plain_rows_per_s"]
    res["dp2_vs_ceiling"] = res["ratio_dp2_vs_single"] / res["ceiling_two_procs_small"]
    res["ceiling_two_actors_vs_one_pp_model"] = res["pp_model_dp2_rows_per_s"] / res["pp2_unsplit_rows_per_s"]
    res["dp2_vs_ceiling_heavy"] = res["ceiling_two_actors_vs_one_pp_model"] / res["ceiling_two_procs_heavy"]
    res["pp2_engine"] = "pool"
    res["ratio_pp2_vs_unsplit"] = res["pool_pp2_rows_per_s"] / res["pool_pp2_unsplit_rows_per_s"]
    res["ray_data_pp2_vs_unsplit"] = res["pp2_rows_per_s"] / res["pp2_unsplit_rows_per_s"]
    res["ray_data_vs_pool_single"] = res["single_rows_per_s"] / res["pool_single_rows_per_s"]
    res["ray_data_vs_pool_dp2"] = res["dp2_rows_per_s"] / res["pool_dp2_rows_per_s"]
    res["ray_data_vs_pool_pp2"] = res["pp2_rows_per_s"] / res["pool_pp2_rows_per_s"]
    res["samples"] = samples

    log("kill run: 2 Ray Data replicas, one stage actor SIGKILLed mid-run")
    res.update(kill_run(whole_small[0], x, ref, bs, th))
    log(f"kill run: lost {res['rows_lost']}, duplicated {res['rows_duplicated']}, restarts {res['kill_restarts']}")
    log(
        f"dp2 vs ceiling {res['dp2_vs_ceiling']:.1%} (small), {res['dp2_vs_ceiling_heavy']:.1%} (heavy); "
        f"1 replica vs plain {res['one_replica_vs_plain']:.2f}x; pp2 vs unsplit {res['ratio_pp2_vs_unsplit']:.2f}x"
    )
    ray.shutdown()
    print(json.dumps(res), file=stdout, flush=True)


if __name__ == "__main__":
    main()
