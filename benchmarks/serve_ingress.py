"""Ray Serve's four ingress options measured on the same models and load, in one command.

    .venv/bin/python benchmarks/serve_ingress.py [--ingress proxy,throughput,haproxy,grpc]
        [--models small,large] [--levels 1,8,32] [--requests 400]

Runs ``benchmarks/serve_load.py --ingress X`` once per option, one after another, each in a fresh Ray
(the options are environment variables read when Serve starts). HAProxy and gRPC listen on every
interface in Ray 2.60, so when this process may create a network namespace (root, ``unshare -n``)
every option runs inside one whose only interface is loopback: nothing is reachable from outside,
and all four run under the same conditions (``network_namespace`` in the JSON says which way it ran).

Prints ONE JSON object: ``machine``, per option its serve_load figures (``small_p50_c1_minus_direct_ms``,
``large_batching_speedup_c32``, the levels and ``errors_total``) with a ``summary`` of the figures
that compare them, and ``fastest``: the option with the lowest small-model p50 at concurrency 1
(``by_p50_c1``) and the highest batched large-model requests/s at the top concurrency (``by_rps_top``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from figures import last_json
from machine import ISOLATED, isolated, machine_info  # benchmarks/ is the script's directory

HERE = Path(__file__).resolve().parent
OPTIONS = ("proxy", "throughput", "haproxy", "grpc")


def summary(out: dict, top: int) -> dict:
    """The figures that compare ingresses: small-model p50 at concurrency 1 (and over a direct ORT call),
    batched large-model requests/s at the top concurrency and its gain over no batching, errors."""
    at = lambda key, c, field: next((r[field] for r in out["levels"].get(key, []) if r["concurrency"] == c), None)  # noqa: E731
    return {
        "small_p50_c1_ms": at("small_nobatch", 1, "p50_ms"),
        "small_p50_c1_minus_direct_ms": out.get("small_p50_c1_minus_direct_ms"),
        "small_batch_rps_top": at("small_batch", top, "req_per_s"),
        "large_batch_rps_top": at("large_batch", top, "req_per_s"),
        "large_batching_speedup_top": out.get(f"large_batching_speedup_c{top}"),
        "errors_total": out.get("errors_total"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ingress", default=",".join(OPTIONS))
    ap.add_argument("--models", default="small,large")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--requests", default="400")
    args = ap.parse_args()
    unknown = sorted(set(args.ingress.split(",")) - set(OPTIONS))
    if unknown:
        raise SystemExit(f"error: --ingress {unknown} not among {list(OPTIONS)}")
    prefix = isolated()
    env = os.environ | {"PYTHONUNBUFFERED": "1", ISOLATED: "1" if prefix else ""}  # serve_load: do not re-isolate
    results: dict = {}
    for option in args.ingress.split(","):
        print(
            f"[serve_ingress] {option}{' (private network namespace)' if prefix else ''}", file=sys.stderr, flush=True
        )
        cmd = [sys.executable, str(HERE / "serve_load.py"), "--ingress", option, "--models", args.models]
        cmd += ["--levels", args.levels, "--requests", args.requests]
        done = subprocess.run(prefix + cmd, stdout=subprocess.PIPE, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"error: serve_load.py --ingress {option} exited {done.returncode}")
        out = last_json(done.stdout, f"serve_load.py --ingress {option}")
        results[option] = {k: v for k, v in out.items() if k not in ("cpu_model", "cores", "mlflow_run_id")}
        results[option]["summary"] = summary(out, max(int(c) for c in args.levels.split(",")))
    best = lambda key, pick: pick(  # noqa: E731 - the option with the best value of a summary key
        (o for o in results if results[o]["summary"].get(key) is not None), key=lambda o: results[o]["summary"][key]
    )
    fastest = {"by_p50_c1": best("small_p50_c1_ms", min)}
    if "large" in args.models.split(","):
        fastest["by_rps_top"] = best("large_batch_rps_top", max)
    table = [{"ingress": o, **results[o]["summary"]} for o in results]  # rendered by figures.py (LISTS)
    report = {
        "machine": machine_info(threads=1),
        "network_namespace": bool(prefix),
        "ingress": results,
        "table": table,
        "fastest": fastest,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
