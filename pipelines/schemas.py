"""Hydra ConfigStore: every config dataclass, so YAML files compose against a schema.

* ``task/<task>/schema``: each task's config dataclass. Task option files
  (``conf/task/<task>/*.yaml``) start with ``defaults: [schema, _self_]``.
* ``ray/schema``, ``tracking/schema``: ``RayConfig``, ``TrackingConfig`` (the ``ray/`` and
  ``tracking/`` option files start with ``defaults: [schema, _self_]``).
* ``slimray_schema``: ``RootConfig``, the whole composed config (``pipelines.config``).

A typo or a wrong type in those files fails when the config is composed; ``pipelines.config``
checks the composed whole once more (``+key=`` overrides bypass Hydra's checks).
"""

from __future__ import annotations

import typing

from hydra.core.config_store import ConfigStore

from pipelines.config import RayConfig, RootConfig, TrackingConfig
from tasks import TASKS

_done = False


def register() -> None:
    global _done
    if _done:
        return
    cs = ConfigStore.instance()
    for task, fn in TASKS.items():
        cs.store(group=f"task/{task}", name="schema", node=typing.get_type_hints(fn)["cfg"])
    cs.store(group="ray", name="schema", node=RayConfig)
    cs.store(group="tracking", name="schema", node=TrackingConfig)
    cs.store(name="slimray_schema", node=RootConfig)
    _done = True
