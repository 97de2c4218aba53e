"""What a figure was measured on: every benchmark's JSON carries this (CPU speed differs ~3x
between machines of the same kind, so a figure without its CPU is not comparable)."""

from __future__ import annotations

import os
import platform
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


def machine_info(threads: int | None = None) -> dict:
    """CPU model, visible cores, the threads the measurement used, and the date."""
    info = {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    if threads is not None:
        info["threads"] = threads
    return info
