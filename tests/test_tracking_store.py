"""Which MLflow store a run writes to: an explicit ``tracking.uri=`` beats ``MLFLOW_TRACKING_URI``
(Hydra's and MLflow's convention), the environment is used when nothing is given, and the
console's first line names the store."""

from __future__ import annotations

import pytest
from engine_helpers import demo_runs

from pipelines.cli import main


def _first_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[0]


@pytest.mark.slow
def test_an_explicit_tracking_uri_wins_over_the_environment(workdir, ray_local, capsys, monkeypatch):
    env_uri = f"sqlite:///{workdir}/env.db"
    mine = f"sqlite:///{workdir}/mine.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    assert main(["pipeline=demo", f"tracking.uri={mine}"]) == 0
    assert _first_line(capsys) == f"MLflow store: {mine} (from tracking.uri)"
    runs = demo_runs(mine)
    assert len(runs) == 1 + 5 + 6  # the parent run, a child per step, a grandchild per sweep trial
    assert not (workdir / "env.db").exists() or demo_runs(env_uri) == []


def test_without_an_override_the_environment_names_the_store(workdir, ray_local, capsys, monkeypatch):
    env_uri = f"sqlite:///{workdir}/env.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    assert main(["pipeline=demo"]) == 0
    assert _first_line(capsys) == f"MLflow store: {env_uri} (from MLFLOW_TRACKING_URI)"
    assert len(demo_runs(env_uri)) == 12
    assert not (workdir / "mlflow.db").exists()
