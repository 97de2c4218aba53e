"""Shared fixtures: a real local Ray (2 CPUs) and a real MLflow sqlite store per test."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The project directory is importable in the Ray workers the tests start, whatever directory a
# test is in when Ray starts (as `slimray` makes the user's working directory importable): the
# user-style models in examples/ and tests/ load there by `_target_`.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
if REPO not in sys.path:  # and in this process, also after a test changes directory
    sys.path.insert(0, REPO)
# The engine tests' toy tasks and their configs (the `demo` pipeline) live here, not in the product:
# SLIMRAY_TASKS adds their step table, SLIMRAY_CONF their config folder (in this process, the CLIs
# the tests start and their Ray workers).
os.environ["SLIMRAY_TASKS"] = "tests.toy_tasks"
os.environ["SLIMRAY_CONF"] = os.path.join(REPO, "tests", "conf")
# The tests are a local run on this machine: the laptop's default cache key (created as a local
# run's driver creates it; Ray workers never create one) signs what they store, also in the
# tests that save outputs without running a pipeline.
from pipelines.store import signing  # noqa: E402

signing.local_default(None)


@pytest.fixture(scope="session")
def _ray_session():
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_local(_ray_session):
    """Embedded Ray with 2 CPUs, shared by the tests (re-started if a test shut it down)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    return ray


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A clean working directory: MLflow's sqlite store and ./mlruns land here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path
