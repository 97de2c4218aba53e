"""The hardware a measurement is taken on: the fingerprint that keys every timing and parity figure.

``fingerprint()`` holds what decides a kernel's speed and, for INT8, its numbers: the CPU model, the
ISA extensions the kernels of torch and ONNX Runtime dispatch on (AVX2, AVX-512, VNNI, AMX, NEON,
SVE), the cores this process may use (``os.sched_getaffinity``), the GPUs and their driver when
CUDA is present, and ONNX Runtime's execution providers. ``describe()`` adds torch's intra-op
threads of the measuring process (a step's threads follow its Ray ``num_cpus``, in its key). The node name is
``node()``, apart: two machines of one type measure alike, so the name is recorded beside a row,
never keyed on.

A measuring step's key holds the fingerprint of the node that runs it (``pipelines.run.placement``
learns each node's with one tiny task); the worker checks its own against the key before it
computes (``pipelines.run.worker``), and ``keyed_on`` makes the key's fingerprint the one the
step's code reads (``keyed()``): ``quantize.reduce_range: auto`` decides from it, so the INT8
numbers stored under a key are those of the hardware the key names.

``SLIMRAY_HARDWARE_SALT`` (a test hook, nothing else): when set, its value is added to the
fingerprint as ``salt``, so a test can show what another machine would rerun without having one.
It is read by every process: set it per node (the raylet's environment, which its workers
inherit) to make one node of a test cluster another machine.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

SALT_ENV = "SLIMRAY_HARDWARE_SALT"
# the ISA extensions kernels dispatch on (x86: /proc/cpuinfo "flags"; Arm: "Features")
KERNEL_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
    "i8mm",
    "bf16",
)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # a u8 x s8 dot product without saturation
X86 = ("x86_64", "amd64", "i386", "i686")  # platform.machine() of an x86 CPU
_KEYED: list[dict] = []  # the fingerprint of the running step's cache key (``keyed_on``)


@cache
def cpu() -> tuple[str, tuple[str, ...]]:
    """(CPU model name, the ``KERNEL_FLAGS`` it has); from /proc/cpuinfo, else ``platform``."""
    model, flags = "", set[str]()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or platform.machine(), tuple(f for f in KERNEL_FLAGS if f in flags)


def has_vnni(fp: dict | None = None) -> bool:
    """Whether the CPU of fingerprint ``fp`` (default: this one) has an INT8 dot-product instruction
    (VNNI or AMX); without one, ONNX Runtime's u8 x s8 kernels on x86 can saturate
    (``tasks.compression.ort_int8``)."""
    flags = cpu()[1] if fp is None else fp["isa"]
    return any(f in flags for f in VNNI_FLAGS)


def is_x86(fp: dict | None = None) -> bool:
    """Whether the CPU of fingerprint ``fp`` (default: this one) is an x86 CPU."""
    machine = platform.machine() if fp is None else fp["arch"]
    return machine.lower() in X86


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _smi_gpus() -> list[str]:
    """The model of every GPU of the node, by ``nvidia-smi`` (which ignores ``CUDA_VISIBLE_DEVICES``);
    [] without it."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


@cache
def gpus() -> dict:
    """``{"gpu": [model names], "driver": version, "cuda": torch's CUDA}`` with a CUDA build of torch
    on a node with GPUs, else ``{}``. The node's GPUs, all of them: a Ray task sees only the GPUs it
    requested (``CUDA_VISIBLE_DEVICES``), and a node's fingerprint must not depend on the request,
    so ``nvidia-smi`` lists them; torch's view where it is missing."""
    import torch

    if torch.version.cuda is None:  # a CPU build of torch uses no GPU
        return {}
    names = _smi_gpus()
    if not names and torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if not names:
        return {}
    try:  # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  ..."
        words = Path("/proc/driver/nvidia/version").read_text().split()
        driver = next(w for w in words if w[:1].isdigit() and "." in w)
    except (OSError, StopIteration):
        driver = "unknown"
    return {"gpu": names, "driver": driver, "cuda": str(torch.version.cuda)}


@cache
def ort_providers() -> tuple[str, ...]:
    try:
        import onnxruntime
    except ImportError:
        return ()
    return tuple(onnxruntime.get_available_providers())


def fingerprint() -> dict:
    """What a timing or an INT8 parity figure depends on, as a cache key holds it: never the node
    name, nor this process's torch threads (a Ray worker's follow its ``num_cpus``, which the key
    holds). The same in every process of a node, so a worker can check it against its key."""
    model, flags = cpu()
    out = {
        "cpu": model,
        "arch": platform.machine(),
        "isa": list(flags),
        "cores": usable_cores(),
        **gpus(),
        "ort_providers": list(ort_providers()),
    }
    if os.environ.get(SALT_ENV):
        out["salt"] = os.environ[SALT_ENV]
    return out


@contextmanager
def keyed_on(fp: dict | None) -> Iterator[None]:
    """While a step runs: ``keyed()`` is ``fp``, the fingerprint its cache key holds (None: no key)."""
    if fp is None:
        yield
        return
    _KEYED.append(fp)
    try:
        yield
    finally:
        _KEYED.pop()


def keyed() -> dict:
    """The fingerprint the running step's cache key holds (``keyed_on``), else this machine's: what a
    hardware-dependent choice of a step (``reduce_range: auto``) decides from, so the numbers stored
    under a key are those of the hardware the key names."""
    return _KEYED[-1] if _KEYED else fingerprint()


def node() -> str:
    return platform.node()


def describe(fp: dict | None = None) -> str:
    """One line: ``<cpu> [isa] <n> cores/<t> threads[, <gpu> (driver d)], <providers>``."""
    import torch

    fp = {"torch_threads": torch.get_num_threads(), **(fp or fingerprint())}
    gpu = f", {'+'.join(fp['gpu'])} (driver {fp['driver']})" if fp.get("gpu") else ""
    providers = ",".join(p.removesuffix("ExecutionProvider") for p in fp["ort_providers"])
    cores = f"{fp['cores']} cores/{fp['torch_threads']} threads"
    text = f"{fp['cpu']} [{' '.join(fp['isa'])}] {cores}{gpu}, ort {providers}"
    return text + (f", salt {fp['salt']}" if "salt" in fp else "")
