"""Data-parallel and pipeline-parallel inference on CPU actors (one thread each).

    .venv/bin/python benchmarks/parallel_inference.py [--rows 200000] [--pp-rows 4096] [--threads 1]

Prints ONE JSON object (progress on stderr):

- data parallel, on a compute-bound MLP (hidden 4 x 512) over ``rows`` rows in batches of 1024:
  ``plain_rows_per_s`` (in-process single-thread torch loop), ``single_rows_per_s`` (the pool
  with 1 replica), ``dp2_rows_per_s`` (2 replicas), and a 2-replica run in which one replica is
  SIGKILLed mid-run: ``rows_lost`` / ``rows_duplicated`` against the plain loop's outputs.
- pipeline parallel, on the zoo's deep MLP (conf/model/mlp_deep.yaml, ~34M parameters) over
  ``pp_rows`` rows in micro-batches of ``--micro-batch`` (256): ``pp2_unsplit_rows_per_s`` (whole model on one actor),
  ``pp2_rows_per_s`` (2 stages balanced by measured module time), ``pp2_bubble_fraction`` and
  ``max_abs_diff`` (pipeline vs unsplit outputs); ``pp_model_dp2_rows_per_s`` (two whole-model
  replicas side by side) gives the ceiling of any two-actor speed-up for this model on this machine
  (memory bandwidth and other load bound it, not the pipeline).

Targets (2 cores): dp2/single >= 1.8, single/plain >= 0.9, pp2/unsplit >= 1.6, 0 lost / 0 duplicated.
Rates exclude actor start-up (model loading), which is reported as ``*_startup_s``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from pipelines.scale.pool import ChainPool  # noqa: E402
from tasks.models.build import build_model, complete_arch, load_model, make_artifact  # noqa: E402
from tasks.steps.inference import Predictor, plan_stages  # noqa: E402


def log(msg: str) -> None:
    print(f"[parallel_inference] {msg}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next(
        (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), platform.processor()
    )


def artifact(hidden: list[int]):
    arch = complete_arch({"_target_": "tasks.models.zoo.MLP", "hidden": hidden}, [40], 10)
    torch.manual_seed(0)
    return make_artifact(build_model(arch), arch, name="mlp", kind="teacher")


def plain(art, x: torch.Tensor, batch: int, threads: int) -> tuple[float, torch.Tensor]:
    torch.set_num_threads(threads)
    model = load_model(art)
    with torch.no_grad():
        model(x[:batch])  # warm-up
        t = time.perf_counter()
        out = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    return len(x) / (time.perf_counter() - t), out


def pooled(stage_fns, x: np.ndarray, batch: int, replicas: int, threads: int, kill_after_s: float = 0.0):
    """(rows/s, outputs, stats, start-up s) of one pool run; optionally SIGKILL a replica mid-run."""
    t = time.perf_counter()
    pool = ChainPool(stage_fns, replicas, num_cpus=threads)
    startup = time.perf_counter() - t
    try:
        pool.map(x[: batch * replicas * 2], batch)  # warm-up: first calls on every actor
        result = {}

        def work():
            try:
                result["out_stats"] = pool.map(x, batch)
            except BaseException as e:  # reported below, in the main thread
                result["error"] = e

        runner = threading.Thread(target=work)
        runner.start()
        if kill_after_s:
            time.sleep(kill_after_s)
            os.kill(pool.pids()[-1][0], signal.SIGKILL)
        runner.join()
        if "error" in result:
            raise result["error"]
        out, stats = result["out_stats"]
    finally:
        pool.shutdown()
    return stats.rows / stats.wall_s, out, stats, startup


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--pp-rows", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--micro-batch", type=int, default=256)
    args = ap.parse_args()
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    res: dict = {
        "rows": args.rows,
        "pp_rows": args.pp_rows,
        "threads": args.threads,
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "dp_model": "MLP 40-512x4-10",
        "pp_model": "mlp_deep (MLP 40-2048x9-10)",
    }
    g = torch.Generator().manual_seed(0)
    dp_art, x = artifact([512] * 4), torch.randn(args.rows, 40, generator=g)
    factory = [functools.partial(Predictor, dp_art, "torch", "cpu", args.threads)]
    res["plain_rows_per_s"], ref = plain(dp_art, x, 1024, args.threads)
    log(f"plain {res['plain_rows_per_s']:.0f} rows/s")
    xn = x.numpy()
    res["single_rows_per_s"], _, _, res["single_startup_s"] = pooled(factory, xn, 1024, 1, args.threads)
    log(f"single {res['single_rows_per_s']:.0f} rows/s")
    res["dp2_rows_per_s"], out, st, res["dp2_startup_s"] = pooled(factory, xn, 1024, 2, args.threads)
    res["dp2_max_abs_diff"] = float((torch.from_numpy(out) - ref).abs().max())
    log(f"dp2 {res['dp2_rows_per_s']:.0f} rows/s")
    kill_at = 0.4 * args.rows / res["dp2_rows_per_s"]
    _, out, st, _ = pooled(factory, xn, 1024, 2, args.threads, kill_after_s=kill_at)
    same = np.isclose(out[: args.rows], ref.numpy(), atol=1e-5).all(axis=1) if len(out) >= args.rows else None
    res["rows_lost"] = int(args.rows - (same.sum() if same is not None else 0))
    res["rows_duplicated"] = int(max(0, len(out) - args.rows) + st.duplicates_dropped * 1024)
    res["kill_restarts"], res["kill_resubmitted_batches"] = st.restarts, st.resubmitted
    log(f"kill run: lost {res['rows_lost']}, duplicated {res['rows_duplicated']}, restarts {st.restarts}")

    deep = artifact([2048] * 9)
    xp = torch.randn(args.pp_rows, 40, generator=g)
    mb = args.micro_batch
    spans = plan_stages(load_model(deep), 2, xp[:mb])
    stages = [functools.partial(Predictor, deep, "torch", "cpu", args.threads, s) for s in spans]
    whole = [functools.partial(Predictor, deep, "torch", "cpu", args.threads)]
    res["pp2_unsplit_rows_per_s"], unsplit, _, _ = pooled(whole, xp.numpy(), mb, 1, args.threads)
    log(f"pp unsplit {res['pp2_unsplit_rows_per_s']:.0f} rows/s")
    res["pp2_rows_per_s"], piped, st, res["pp2_startup_s"] = pooled(stages, xp.numpy(), mb, 1, args.threads)
    # the ceiling of any 2-actor speed-up on this model here: 2 whole-model replicas side by side
    res["pp_model_dp2_rows_per_s"], _, _, _ = pooled(whole, xp.numpy(), mb, 2, args.threads)
    res["pp2_bubble_fraction"] = st.summary()["bubble_fraction"]
    res["pp2_spans"] = [[int(a), int(b)] for a, b in spans]
    res["max_abs_diff"] = float(np.abs(piped - unsplit).max())
    log(f"pp2 {res['pp2_rows_per_s']:.0f} rows/s")
    res["ratio_dp2_vs_single"] = res["dp2_rows_per_s"] / res["single_rows_per_s"]
    res["ratio_single_vs_plain"] = res["single_rows_per_s"] / res["plain_rows_per_s"]
    res["ratio_pp2_vs_unsplit"] = res["pp2_rows_per_s"] / res["pp2_unsplit_rows_per_s"]
    res["ceiling_two_actors_vs_one_pp_model"] = res["pp_model_dp2_rows_per_s"] / res["pp2_unsplit_rows_per_s"]
    res["micro_batch"] = mb
    ray.shutdown()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
