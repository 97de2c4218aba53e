"""Model- and data-parallel greedy generation of SmolLM2-135M on Ray actors against this machine's ceiling.

Prints ONE JSON object: decode throughput (new tokens/s over ``--prompts`` equal-length prompts x
``--new`` tokens, FP32, 1 torch thread per process or actor) of the unsplit model's ``generate`` in one
process, of a K=2 pipeline of stage actors, of R=1 and R=2 replica actors, and of the two-process
ceiling measured in the same run the way ``plain_procs.py`` measures it (each process the unsplit
``generate`` loop on its half of the micro-batches, started together at a barrier, combined rate over
the window all of them ran). Every configuration decodes the same micro-batches (``--rows`` prompts
each), so the ratios compare parallel efficiency at one batch shape. ``pp2_identical`` /
``dp2_identical``: their tokens equal the unsplit ``generate``'s. ``rows_lost`` / ``rows_duplicated``:
a separate R=2 run in which one actor is SIGKILLed mid-run.

The plain loops run at the niceness Ray gives its workers (as in ``parallel_inference.py``). The
measuring functions (``smollm_files``, ``make_prompts``, ``inprocess``, ``ceiling``, ``on_actors``,
``killed_run``) are importable (``benchmarks/serve_llm.py``).

    .venv/bin/python benchmarks/llm_parallel.py [--prompts 16 --new 32 --rows 4 --length 32]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from plain_procs import concurrent_rate, lower_priority  # noqa: E402

RAY_WORKER_NICENESS = 15  # Ray starts its worker processes (actors) at this niceness
TEXT = (
    "Rivers flow from the mountains to the sea, carrying water, stones and stories of the places they pass. "
    "Every morning the baker opens the shop, lights the oven and bakes fresh bread for the people of the "
    "village. Compression makes a model smaller and faster: we can remove layers, shrink the hidden width, "
    "or store the weights with fewer bits. Please explain why the sky is blue, in three short sentences. "
)


def log(msg: str) -> None:
    print(f"[llm_parallel] {msg}", file=sys.stderr, flush=True)


def smollm_files() -> tuple[dict[str, bytes], Any]:
    """({"config.json", "model.safetensors"} of SmolLM2-135M FP32, its tokenizer): loaded once, then
    every process and actor builds the model from these bytes in a second instead of the GGUF's ~30 s."""
    from safetensors.torch import save

    from tasks.llm.model import config_dict, lm_state, load_causal_lm

    model, tokenizer = load_causal_lm("smollm2")
    files = {"config.json": json.dumps(config_dict(model)).encode(), "model.safetensors": save(lm_state(model))}
    return files, tokenizer


def make_prompts(tokenizer: Any, count: int, length: int) -> list[list[int]]:
    """``count`` different prompts of ``length`` tokens: windows of the tokenized ``TEXT``, cycled."""
    ids = tokenizer(TEXT * (1 + count * length // 40))["input_ids"]
    step = max(1, (len(ids) - length) // count)
    return [ids[i * step : i * step + length] for i in range(count)]


def _batches(prompts: list[list[int]], rows: int) -> list[np.ndarray]:
    return [np.array(prompts[i : i + rows], np.int64) for i in range(0, len(prompts), rows)]


def inprocess(files: dict, prompts: list, new: int, rows: int, eos: int, niceness: int) -> tuple[float, list]:
    """(new tokens/s, tokens per prompt) of the unsplit ``generate`` over ``rows``-prompt batches in one
    thread at ``niceness``, after a warm-up batch."""
    from tasks.llm.decoder import TorchDecoder
    from tasks.llm.stages import load_model

    torch.set_num_threads(1)
    decoder, got = TorchDecoder(load_model(files)), {}

    def loop() -> None:
        lower_priority(niceness, threading.get_native_id())
        decoder.generate(_batches(prompts, rows)[0], 2)
        t = time.perf_counter()
        got["out"] = [row.tolist() for b in _batches(prompts, rows) for row in decoder.generate(b, new, eos)]
        got["s"] = time.perf_counter() - t

    runner = threading.Thread(target=loop)
    runner.start()
    runner.join()
    return len(prompts) * new / got["s"], got["out"]


def _loop(path, batches, new, eos, duration_s, niceness, barrier, results, index) -> None:
    """One ceiling process: the unsplit ``generate`` over its batches, cycled until ``duration_s``."""
    from tasks.llm.decoder import TorchDecoder
    from tasks.llm.stages import load_model

    lower_priority(niceness)
    torch.set_num_threads(1)
    files = {n: open(os.path.join(path, n), "rb").read() for n in ("config.json", "model.safetensors")}
    decoder = TorchDecoder(load_model(files))
    decoder.generate(batches[0], 2)
    barrier.wait()
    start, ends, counts, i = time.monotonic(), [], [], 0
    while not ends or ends[-1] - start < duration_s:
        decoder.generate(batches[i % len(batches)], new, eos)
        ends.append(time.monotonic())
        counts.append(len(batches[i % len(batches)]) * new)
        i += 1
    results.put((index, start, ends, counts))


def ceiling(files: dict, prompts: list, new: int, rows: int, eos: int, duration_s: float, niceness: int) -> float:
    """Combined new tokens/s of two spawned processes decoding at once (``plain_procs.concurrent_rate``),
    each on half of the batches, for about ``duration_s``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name, body in files.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(body)
        batches = _batches(prompts, rows)
        ctx = mp.get_context("spawn")
        barrier, results = ctx.Barrier(2), ctx.Queue()
        halves = [batches[0::2], batches[1::2]]
        args = [(tmp, halves[i], new, eos, duration_s, niceness, barrier, results, i) for i in range(2)]
        procs = [ctx.Process(target=_loop, args=a) for a in args]
        for p in procs:
            p.start()
        got: list = []
        while len(got) < 2:
            try:
                got.append(results.get(timeout=5))
            except queue.Empty:
                if any(p.exitcode for p in procs):
                    raise RuntimeError("a ceiling process failed") from None
        for p in procs:
            p.join()
    return concurrent_rate([(start, ends, counts) for _, start, ends, counts in got])


def on_actors(
    files: Any, prompts: list, new: int, rows: int, eos: int, stages: int, replicas: int
) -> tuple[dict, list]:
    """(summary with ``tokens_per_s``, tokens per prompt) of one timed ``generate`` on a fresh pool of
    ``replicas`` x ``stages`` actors (1 CPU, 1 thread each), after a warm-up micro-batch."""
    from pipelines.scale.generate import GenerationPool

    pool = GenerationPool(files, stages=stages, replicas=replicas, num_cpus=1.0, threads=1)
    try:
        pool.generate(prompts[: rows * replicas], 2, micro_batches=replicas)
        out, summary = pool.generate(prompts, new, eos, micro_batches=-(-len(prompts) // rows))
    finally:
        pool.shutdown()
    return summary, out


def killed_run(files: Any, prompts: list, new: int, rows: int, eos: int, after_steps: int = 20) -> tuple[dict, list]:
    """An R=2 ``generate`` in which one actor is SIGKILLed after ``after_steps`` decode steps."""
    from pipelines.scale.generate import GenerationPool

    pool = GenerationPool(files, replicas=2, num_cpus=1.0, threads=1)
    try:
        victim, result = pool.pids()[1][0], {}
        runner = threading.Thread(
            target=lambda: result.update(r=pool.generate(prompts, new, eos, micro_batches=-(-len(prompts) // rows)))
        )
        runner.start()
        while pool.steps_done < after_steps and runner.is_alive():
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        runner.join()
    finally:
        pool.shutdown()
    out, summary = result["r"]
    return summary, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new", type=int, default=32, help="new tokens per prompt")
    ap.add_argument("--rows", type=int, default=4, help="prompts per micro-batch")
    ap.add_argument("--length", type=int, default=32, help="tokens per prompt")
    ap.add_argument("--niceness", type=int, default=RAY_WORKER_NICENESS)
    print(json.dumps(measure(ap.parse_args()), indent=2))


def measure(args: argparse.Namespace | None = None) -> dict:
    """The figures of the module doc (``args``: main's options; None: their defaults)."""
    if args is None:
        args = argparse.Namespace(prompts=16, new=32, rows=4, length=32, niceness=RAY_WORKER_NICENESS)
    import ray
    from machine import machine_info

    from tasks.runtime.hardware import describe

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    files, tokenizer = smollm_files()
    prompts = make_prompts(tokenizer, args.prompts, args.length)
    eos = int(tokenizer.eos_token_id)  # passed everywhere: generate also stops at the model's own eos
    base, reference = inprocess(files, prompts, args.new, args.rows, eos, args.niceness)
    log(f"unsplit {base:.1f} tok/s")
    two = ceiling(files, prompts, args.new, args.rows, eos, len(prompts) * args.new / base / 2, args.niceness)
    log(f"ceiling {two:.1f} tok/s")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ref = ray.put(files)
    run = (ref, prompts, args.new, args.rows, eos)
    pp2, pp2_out = on_actors(*run, stages=2, replicas=1)
    log(f"pp2 {pp2['tokens_per_s']:.1f} tok/s")
    dp1, _ = on_actors(*run, stages=1, replicas=1)
    dp2, dp2_out = on_actors(*run, stages=1, replicas=2)
    log(f"dp1 {dp1['tokens_per_s']:.1f}, dp2 {dp2['tokens_per_s']:.1f} tok/s")
    killed, killed_out = killed_run(*run)
    ray.shutdown()
    figures = {
        "model": "SmolLM2-135M FP32 (torch)",
        "prompts": args.prompts,
        "prompt_tokens": args.length,
        "new_tokens": args.new,
        "rows_per_micro_batch": args.rows,
        "threads": 1,
        "niceness": args.niceness,
        "unsplit_tok_s": base,
        "ceiling_two_process_tok_s": two,
        "two_process_speedup": two / base,
        "pp2_tok_s": pp2["tokens_per_s"],
        "pp2_bubble_fraction": pp2["bubble_fraction"],
        "dp1_tok_s": dp1["tokens_per_s"],
        "dp2_tok_s": dp2["tokens_per_s"],
        "pp2_vs_ceiling": pp2["tokens_per_s"] / two,
        "dp2_vs_ceiling": dp2["tokens_per_s"] / two,
        "dp2_vs_dp1": dp2["tokens_per_s"] / dp1["tokens_per_s"],
        "dp1_vs_unsplit": dp1["tokens_per_s"] / base,
        "pp2_identical": pp2_out == reference,
        "dp2_identical": dp2_out == reference,
        "killed_identical": killed_out == reference,
        "rows_ended_at_eos": sum(eos in r[:-1] for r in reference),
        "killed_restarts": killed["restarts"],
        "rows_lost": killed["rows_lost"],
        "rows_duplicated": killed["rows_duplicated"],
        "machine": {**machine_info(threads=1), "describe": describe()},
        "load_average_1m": [load_before, os.getloadavg()[0]],
    }
    return figures


if __name__ == "__main__":
    main()
