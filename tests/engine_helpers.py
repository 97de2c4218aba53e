"""Run pipelines in-process through the same path as the CLI (compose -> validate -> execute)."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines import session
from pipelines.cli import load_config, main


def run_pipeline(workdir, overrides=(), pipeline: dict | None = None):
    cfg = load_config(["pipeline=demo", f"tracking.uri=sqlite:///{workdir}/mlflow.db", *overrides])
    if pipeline is not None:
        cfg.pipeline = OmegaConf.create(pipeline)
    spec, ray_cfg, tracking = session.validate(cfg)
    return session.execute(cfg, spec, ray_cfg, tracking, list(overrides))


def child_runs(outcome, parent: str | None = None):
    client = MlflowClient(tracking_uri=outcome.uri)
    return client.search_runs(
        [outcome.experiment_id],
        max_results=1000,
        filter_string=f"tags.`mlflow.parentRunId` = '{parent or outcome.run_id}'",
    )


def all_runs(outcome):
    client = MlflowClient(tracking_uri=outcome.uri)
    return client.search_runs(
        [outcome.experiment_id], max_results=1000, filter_string=f"tags.`slimray.root` = '{outcome.run_id}'"
    )


def assert_config_error(argv: list[str], expected: str | list[str], workdir, capsys) -> None:
    """``slimray argv`` is a config error: exit 2, one ``error:`` line holding every expected part,
    no MLflow store written and Ray's state untouched."""
    import ray

    was_running = ray.is_initialized()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    for part in [expected] if isinstance(expected, str) else expected:
        assert part in err, err
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()
    assert ray.is_initialized() == was_running
