"""How long the cache keys of a pipeline take to compute, as a cached rerun pays it: the first
``step_keys`` call of a fresh process (code walk, distributions, hardware fingerprint, file hashes),
``--repeat`` times, each in a new interpreter.

    .venv/bin/python benchmarks/key_time.py [--experiment smoke] [--repeat 5]

Prints one JSON object (seconds per run, their median, the machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from machine import machine_info  # benchmarks/ is the script's directory

CHILD = """
import sys, time
from pipelines.config.compose import load_config
from pipelines.run import session
from pipelines.store.keys import step_keys
spec = session.validate(load_config(sys.argv[1:]))[0]
t = time.perf_counter()
step_keys(spec, 0)
print(time.perf_counter() - t)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", default="smoke")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    runs = []
    for _ in range(args.repeat):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, f"experiment={args.experiment}"], capture_output=True, text=True, check=True
        )
        runs.append(round(float(out.stdout.strip().splitlines()[-1]), 4))
    result = {"experiment": args.experiment, "key_s": runs, "median_s": statistics.median(runs)}
    print(json.dumps({**result, **machine_info()}))


if __name__ == "__main__":
    main()
