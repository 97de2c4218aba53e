"""``slimray submit`` without a cluster: what it refuses (one line, exit 2) and what it sends.
The end-to-end submission to a real cluster is in test_cluster_scripts.py."""

from __future__ import annotations

import shlex
import socket
from types import SimpleNamespace

import pytest

from pipelines.cli import main
from pipelines.scale import submit


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, "set RAY_API_SERVER_ADDRESS"),
        ({"RAY_ADDRESS": "127.0.0.1:6379"}, "set RAY_API_SERVER_ADDRESS"),
        ({"RAY_API_SERVER_ADDRESS": "http://127.0.0.1:1"}, "set MLFLOW_TRACKING_URI to the tracking server"),
        (
            {"RAY_API_SERVER_ADDRESS": "http://127.0.0.1:1", "MLFLOW_TRACKING_URI": "sqlite:///x.db"},
            "set MLFLOW_TRACKING_URI to the tracking server",
        ),
        (
            {"RAY_API_SERVER_ADDRESS": "http://127.0.0.1:1", "MLFLOW_TRACKING_URI": "http://127.0.0.1:{dead}"},
            "is unreachable",
        ),
    ],
)
def test_refusals_are_one_line_exit_2(monkeypatch, capsys, env, expected):
    for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(dead=_dead_port()))
    assert main(["submit", "pipeline=demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err


def test_unknown_flag(capsys):
    assert main(["submit", "--follow"]) == 2
    assert "unknown option --follow" in capsys.readouterr().err


def test_job_spec_ships_the_project_and_passes_tracking(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    spec = submit.job_spec(["pipeline=demo", "pipeline.steps.left.params.amount=2 "], tmp_path)
    assert shlex.split(spec["entrypoint"]) == [
        "python",
        "-m",
        "pipelines",
        "ray=cluster",
        "pipeline=demo",
        "pipeline.steps.left.params.amount=2 ",
    ]
    env = spec["runtime_env"]["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000" and env["MLFLOW_TRACKING_PASSWORD"] == "pw"
    assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in env  # the token never travels in the job spec
    assert spec["runtime_env"]["working_dir"] == str(tmp_path)
    assert {".venv", ".git", ".cluster", "mlruns", "mlflow.db"} <= set(spec["runtime_env"]["excludes"])


@pytest.mark.parametrize(
    "status, driver_code, expected",
    [("SUCCEEDED", 0, 0), ("FAILED", 1, 1), ("FAILED", 2, 2), ("FAILED", None, 1), ("STOPPED", None, 130)],
)
def test_exit_code_is_the_pipelines(status, driver_code, expected):
    assert submit.exit_code(SimpleNamespace(status=status, driver_exit_code=driver_code)) == expected
