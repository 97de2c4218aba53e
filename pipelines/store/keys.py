"""Content-addressed step keys.

key(step) = sha256(task name, fingerprint of the task's code, the versions of the libraries
that code uses, resolved params, content hashes of the files the params name, the keys of
the input steps, the seed). Same key => same output, so a stored output can be reused.

- Code: the source of the task's module and every ``tasks.*`` module it reaches, so editing
  the training loop invalidates every step that trains.
- Libraries: the installed versions of the libraries that change numbers (``LIBRARIES``), for
  the ones the task's code imports, plus the project's own version: upgrading onnxruntime
  invalidates the steps that run onnxruntime, not the ones that only train in torch.
- Files: every param value that names an existing file or directory (a data ``path``, a
  checkpoint) is replaced in the key by a hash of its contents, so editing a data file in
  place is a different key. Hashes are streamed and remembered by (path, mtime, size), in
  memory and in ``~/.cache/slimray/file-hashes.json`` (``SLIMRAY_CACHE_DIR``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import inspect
import json
import os
import re
import sys
import types
from functools import cache
from pathlib import Path

from pipelines.config.spec import PipelineSpec, StepSpec
from tasks import task_table

PROJECT = "slimray"
# import name -> distribution name: the libraries whose version can change a step's numbers
LIBRARIES = {
    "torch": "torch",
    "onnxruntime": "onnxruntime",
    "onnx": "onnx",
    "torch_pruning": "torch-pruning",
    "numpy": "numpy",
    "sklearn": "scikit-learn",
    "mnist1d": "mnist1d",
    "transformers": "transformers",
}
FILE_HINT = re.compile(r"[/\\]|\.\w{1,10}$")  # looks like a path: has a separator or a file suffix


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _task_modules(module: types.ModuleType) -> set[str]:
    """``module`` plus every ``tasks.*`` module reachable from its globals."""
    seen: set[str] = set()
    todo = [module.__name__]
    while todo:
        name = todo.pop()
        if name in seen or name not in sys.modules:
            continue
        seen.add(name)
        for value in vars(sys.modules[name]).values():
            dep = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
            if isinstance(dep, str) and dep.startswith("tasks.") and dep not in seen:
                todo.append(dep)
    return seen


def _task_sources(task: str) -> dict[str, str]:
    module = sys.modules[task_table()[task].__module__]
    return {name: inspect.getsource(sys.modules[name]) for name in sorted(_task_modules(module))}


@cache
def code_fingerprint(task: str) -> str:
    return _sha(_task_sources(task))


def library_versions() -> dict[str, str]:
    """Installed versions of ``LIBRARIES`` and of the project ("absent" when not installed)."""
    out = {}
    for dist in [*LIBRARIES.values(), PROJECT]:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "absent"
    return out


@cache
def task_libraries(task: str) -> tuple[str, ...]:
    """The distributions in ``LIBRARIES`` that the task's code imports (lazily or not)."""
    text = "\n".join(_task_sources(task).values())
    return tuple(
        sorted(
            dist for mod, dist in LIBRARIES.items() if re.search(rf"^\s*(import|from)\s+{mod}\b", text, re.MULTILINE)
        )
    )


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


def file_hashes(params, hasher: FileHasher) -> dict[str, str]:
    """``{dotted param path: content hash}`` for every string param naming an existing file or dir."""
    out: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{prefix}{i}.")
        elif isinstance(node, str) and node and FILE_HINT.search(node) and os.path.exists(node):
            out[prefix[:-1]] = hasher.path(Path(node))

    walk(params, "")
    return out


def trial_key(
    step: StepSpec,
    params: dict,
    input_keys: dict[str, list[str]],
    seed: int,
    versions: dict[str, str],
    hasher: FileHasher,
) -> str:
    libs = {d: versions[d] for d in (*task_libraries(step.task), PROJECT)}
    return _sha(
        {
            "task": step.task,
            "code": code_fingerprint(step.task),
            "libraries": libs,
            "params": params,
            "files": file_hashes(params, hasher),
            "inputs": input_keys,
            "seed": seed,
        }
    )


def step_keys(spec: PipelineSpec, seed: int, versions: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Cache key of every trial of every step (a plain step has one trial)."""
    versions = versions or library_versions()
    hasher = FileHasher()
    keys: dict[str, list[str]] = {}
    summary: dict[str, str] = {}  # a step's key as seen by its consumers
    for s in spec.steps.values():
        input_keys = {
            p: [summary[r.step] + ("[*]" if r.all_trials else "") for r in refs] for p, refs in s.inputs.items()
        }
        keys[s.name] = [trial_key(s, t.params, input_keys, seed, versions, hasher) for t in s.trials]
        select = None if s.select is None else repr(s.select)
        summary[s.name] = keys[s.name][0] if not s.is_sweep else _sha({"trials": keys[s.name], "select": select})
    hasher.save()
    return keys
