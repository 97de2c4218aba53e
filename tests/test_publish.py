"""Tasks are pure; the engine publishes. A step's Publication reaches the pipeline's parent run
(files, headline metrics, description, registered model linked to the run) on the computed path
and on the cache-hit path alike; the experiment is a model-training experiment; a fully cached
rerun starts no Ray."""

from __future__ import annotations

import tempfile
from pathlib import Path

from engine_helpers import run_pipeline
from mlflow.tracking import MlflowClient

from pipelines.store import modelfiles, registry

PIPELINE = {
    "name": "publishing",
    "steps": {
        "source": {"task": "toy_source", "params": {"value": 2.0, "size": 3}},
        "publish": {"task": "toy_publish", "inputs": {"x": "source"}, "params": {"registry_name": "pub-demo"}},
    },
}


def _parent_view(client: MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(client.download_artifacts(run_id, "summary.md", tmp)).read_text()
    return {
        "metrics": run.data.metrics,
        "note": run.data.tags.get("mlflow.note.content", ""),
        "registered": run.data.tags.get("slimray.registered", ""),
        "summary": summary,
        "status": run.info.status,
    }


def _check(client: MlflowClient, outcome) -> str:
    view = _parent_view(client, outcome.run_id)
    assert view["status"] == "FINISHED"
    assert view["metrics"]["headline.total"] == 6.0
    assert "The total is **6.0**" in view["note"]
    assert view["summary"] == "total = 6.0\n"
    version = client.get_model_version_by_alias("pub-demo", "candidate")
    assert version.run_id == outcome.run_id  # the alias points at a version logged from THIS execution
    assert view["registered"] == f"pub-demo@candidate v{version.version}"
    assert outcome.registered == [view["registered"]]
    return version.version


def test_computed_and_cached_executions_publish_the_same(workdir, ray_local):
    first = run_pipeline(workdir, pipeline=PIPELINE)
    assert first.exit_code == 0
    client = MlflowClient(tracking_uri=first.uri)
    exp = client.get_experiment(first.experiment_id)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    v1 = _check(client, first)

    ray_local.shutdown()  # a fully cached rerun must not need Ray at all
    again = run_pipeline(workdir, pipeline=PIPELINE)
    assert again.exit_code == 0
    assert {st.status for st in again.states.values()} == {"cached"}
    assert not ray_local.is_initialized()
    v2 = _check(client, again)
    assert int(v2) == int(v1) + 1
    first_v, again_v = (client.get_model_version("pub-demo", v) for v in (v1, v2))
    model_id = registry.model_id_of(first_v)
    assert model_id and registry.model_id_of(again_v) == model_id  # the verified logged model, reused
    for mv in (first_v, again_v):  # each version carries the signed list of that model's files
        assert "MLmodel" in modelfiles.read_files(mv.tags[modelfiles.FILES_TAG], model_id, f"v{mv.version}")
    import mlflow.onnx  # the new version (reusing the logged model) serves like the first

    mlflow.set_tracking_uri(again.uri)
    model = mlflow.onnx.load_model("models:/pub-demo@candidate")
    assert [i.name for i in model.graph.input] == ["input"]
    step_runs = client.search_runs([again.experiment_id], filter_string=f"tags.`slimray.root` = '{again.run_id}'")
    # the step runs stay the task's own: nothing was published there by the engine
    assert all(r.data.tags.get("slimray.cached") == "true" for r in step_runs)
    assert all("headline.total" not in r.data.metrics for r in step_runs)
