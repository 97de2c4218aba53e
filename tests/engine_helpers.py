"""Run pipelines in-process through the same path as the CLI (compose -> validate -> execute)."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines import session
from pipelines.cli import load_config


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
