"""Content-addressed step keys.

key(step) = sha256(task name, fingerprint of the task's code, resolved params, the keys of
the input steps, the seed). Same key => same output, so a stored output can be reused.
The code fingerprint hashes the source of the task's module and every ``tasks.*`` module it
reaches, so editing the training loop invalidates every step that trains.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import sys
import types
from functools import lru_cache

from pipelines.spec import PipelineSpec, StepSpec
from tasks import TASKS


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


@lru_cache(maxsize=None)
def code_fingerprint(task: str) -> str:
    module = sys.modules[TASKS[task].__module__]
    sources = {name: inspect.getsource(sys.modules[name]) for name in sorted(_task_modules(module))}
    return _sha(sources)


def trial_key(step: StepSpec, params: dict, input_keys: dict[str, list[str]], seed: int) -> str:
    return _sha({"task": step.task, "code": code_fingerprint(step.task), "params": params,
                 "inputs": input_keys, "seed": seed})


def step_keys(spec: PipelineSpec, seed: int) -> dict[str, list[str]]:
    """Cache key of every trial of every step (a plain step has one trial)."""
    keys: dict[str, list[str]] = {}
    summary: dict[str, str] = {}  # a step's key as seen by its consumers
    for s in spec.steps.values():
        input_keys = {p: [summary[r.step] + ("[*]" if r.all_trials else "") for r in refs]
                      for p, refs in s.inputs.items()}
        keys[s.name] = [trial_key(s, t.params, input_keys, seed) for t in s.trials]
        select = None if s.select is None else repr(s.select)
        summary[s.name] = keys[s.name][0] if not s.is_sweep else _sha({"trials": keys[s.name], "select": select})
    return keys
