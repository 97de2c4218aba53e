"""What a figure was measured on: every benchmark's JSON carries this (CPU speed differs ~3x
between machines of the same kind, so a figure without its CPU is not comparable)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def variants_head(bench: dict, variants: list[dict], selected: dict | None) -> dict:
    """The head of a transformer benchmark's JSON (minilm.py, textcls.py): the reference, the machine
    (with the load it ran under), every variant and the selected one's name."""
    return {
        "reference": "torch_fp32",
        "machine": {**machine_info(threads=bench.get("threads")), "loadavg_1m": os.getloadavg()[0]},
        "variants": variants,
        "selected": selected["name"] if selected else None,
    }


def machine_info(threads: int | None = None) -> dict:
    """CPU model, visible cores, the threads the measurement used, and the date."""
    info = {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    if threads is not None:
        info["threads"] = threads
    return info


ISOLATED = "SLIMRAY_BENCH_NETNS"  # set in a process that already runs in a private network namespace


def isolated() -> list[str]:
    """The command prefix that runs a child in a private network namespace whose only interface is
    loopback (``unshare -n``, root), or [] where this process may not create one."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return []
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] if probe.returncode == 0 else []


def reexec_isolated() -> bool:
    """Re-run this script in a private network namespace (servers that Ray binds on every interface
    are then reachable from loopback alone); False where that is not possible or already done."""
    prefix = [] if os.environ.get(ISOLATED) == "1" else isolated()
    if not prefix:
        return False
    os.environ[ISOLATED] = "1"
    os.execvp(prefix[0], [*prefix, sys.executable, *sys.argv])
    return True  # not reached
