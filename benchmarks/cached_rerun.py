"""A cached rerun is instant: the whole `slimray` command, run again unchanged, in a fresh
process (interpreter start, imports, Hydra compose, validation, cache look-up, recording).

    .venv/bin/python benchmarks/cached_rerun.py [--experiment smoke] [--repeat 3]

Runs `python -m pipelines experiment=<name>` once in a fresh directory (computing every step),
then times `--repeat` unchanged reruns of the same command; one more rerun under
``python -X importtime`` says where the import time goes (own import seconds per top-level
package) and that Ray is not even imported: nothing has to run, so no Ray starts. Prints one
JSON object. Target: <= 4 s for the whole command on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from launch import fresh_dir, python, slimray  # benchmarks/ is the script's directory
from machine import machine_info

TARGET_S = 4.0
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+\d+ \| (\s*)(\S+)$")


def import_profile(overrides: list[str], cwd: Path) -> dict:
    """A rerun under ``-X importtime``: seconds of own import time per top-level package (the
    heaviest ones), their total, and whether Ray was imported."""
    done = python(["-X", "importtime", "-m", "pipelines", *overrides], cwd).check()
    own: Counter[str] = Counter()
    for line in done.stderr.splitlines():
        found = IMPORT_LINE.match(line)
        if found:
            own[found.group(3).split(".")[0]] += int(found.group(1)) / 1e6
    return {
        "imports_s": round(sum(own.values()), 2),
        "imports_top_s": {name: round(s, 2) for name, s in own.most_common(8)},
        "ray_imported": "ray" in own,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", default="smoke")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    overrides = [f"experiment={args.experiment}"] if args.experiment else []
    with fresh_dir("slimray-rerun-") as wd:
        first = slimray(overrides, wd).check()
        reruns = []
        for _ in range(args.repeat):
            done = slimray(overrides, wd).check()
            lines = [ln for ln in done.stderr.splitlines() if ln.strip().startswith(("cached", "done", "failed"))]
            assert lines and all(ln.split()[0] == "cached" for ln in lines), lines
            reruns.append(done.seconds)
        profile = import_profile(overrides, wd)
    best = min(reruns)
    print(
        json.dumps(
            {
                **machine_info(),
                "experiment": args.experiment,
                "first_run_s": round(first.seconds, 1),
                "cached_rerun_cli_s": round(best, 2),
                "cached_rerun_cli_all_s": [round(r, 2) for r in reruns],
                **profile,
                "target_s": TARGET_S,
                "ok": best <= TARGET_S and not profile["ray_imported"],
            }
        )
    )


if __name__ == "__main__":
    main()
