"""Hydra ConfigStore: every task's config dataclass as ``task/<task>/schema``.

Task option files (``conf/task/<task>/*.yaml``) start with ``defaults: [schema, _self_]``, so
a typo or a wrong type in a task's params fails when the config is composed.
"""
from __future__ import annotations

from hydra.core.config_store import ConfigStore

from pipelines.spec import task_signature
from tasks import TASKS

_done = False


def register() -> None:
    global _done
    if _done:
        return
    cs = ConfigStore.instance()
    for task in TASKS:
        cs.store(group=f"task/{task}", name="schema", node=task_signature(task)[2])
    _done = True
