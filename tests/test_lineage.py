"""Lineage in MLflow on a real pipeline (real Ray, a real sqlite store): the data step's dataset is an
MLflow dataset linked to every run that consumes it and to the parent run; the registered version
says what it is (figures, hardware, recipe, data digest, commit as tags; the report as description;
its signature); every benchmarked candidate is a logged model of the experiment with its figures.
A fully cached rerun says the same, and logs no candidate twice."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest
import yaml
from lineage_run import AMOUNTS, REGISTRY, run_lineage
from mlflow.tracking import MlflowClient

from pipelines.run import session

DOWNSTREAM_OF_DATA = {"teacher", "prune", "export", "quantize", "benchmark", "report"}  # every other step


def _runs(client: MlflowClient, out) -> list:
    return client.search_runs([out.experiment_id], filter_string=f"tags.`slimray.root` = '{out.run_id}'")


def _data_digest(client: MlflowClient, run_id: str, dst: Path) -> str:
    """The oracle: sha256 of every stored file of the data output, hashed in name order."""
    local = Path(client.download_artifacts(run_id, "output", str(dst)))
    stored = [p for p in local.rglob("*") if p.is_file() and p.name != "manifest.json"]
    files = {str(p.relative_to(local)): hashlib.sha256(p.read_bytes()).hexdigest() for p in stored}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:32]


def _datasets(run) -> dict[str, tuple[str, str]]:
    """name -> (digest, context) of a run's dataset inputs."""
    found = {}
    for d in run.inputs.dataset_inputs:
        context = next((t.value for t in d.tags if t.key == "mlflow.data.context"), "")
        found[d.dataset.name] = (d.dataset.digest, context)
    return found


def check_datasets(client: MlflowClient, out, digest: str) -> None:
    runs = _runs(client, out)
    steps = {r.data.tags.get("slimray.step") for r in runs}
    assert steps == DOWNSTREAM_OF_DATA | {"data"}
    for run in runs:
        step = run.data.tags["slimray.step"]
        want = "output" if step == "data" else "data" if step != "report" else "upstream"
        assert _datasets(run) == {"digits": (digest, want)}, (run.info.run_name, run.inputs.dataset_inputs)
    assert _datasets(client.get_run(out.run_id)) == {"digits": (digest, "pipeline")}
    data_run = client.get_run(out.states["data"].trials[0].meta.run_id)
    dataset = data_run.inputs.dataset_inputs[0].dataset
    profile = json.loads(dataset.profile)
    assert profile["rows"] == {k: int(out.states["data"].summary[f"n_{k}"]) for k in ("train", "val", "test")}
    schema = json.loads(dataset.schema)["mlflow_tensorspec"]
    assert json.loads(schema["features"])[0]["tensor-spec"] == {"dtype": "float32", "shape": [-1, 1, 8, 8]}


def _bench_rows(client: MlflowClient, out, dst: Path) -> dict[str, dict]:
    st = out.states["benchmark"]
    path = client.download_artifacts(st.trials[0].meta.run_id, "benchmark.json", str(dst))
    return {r["name"]: r for r in json.loads(Path(path).read_text())["candidates"]}


def check_version(client: MlflowClient, out, rows: dict, digest: str, dst: Path):
    mv = client.get_model_version_by_alias(REGISTRY, "candidate")
    tags = mv.tags
    chosen = out.states["prune"].trials[out.states["prune"].selected].label
    assert chosen in {f"amount={a}" for a in AMOUNTS}
    assert tags["recipe"] == f"teacher → prune[{chosen},method=channel] → export → quantize[method=static_int8]"
    assert tags["model"] == "quantize" and rows["quantize"]["selected"]
    for key in ("test_acc", "size_bytes", "throughput_b256", "latency_ms_p50_b1"):
        assert float(tags[key]) == pytest.approx(rows["quantize"][key], rel=1e-5), key
    assert tags["hardware"] and tags["runtime"].startswith("onnxruntime") and tags["threads"] == "1"
    assert (tags["dataset"], tags["dataset_digest"]) == ("digits", digest)
    assert tags["git_commit"] == client.get_run(out.run_id).data.tags["mlflow.source.git.commit"]
    assert mv.description == client.get_run(out.run_id).data.tags["mlflow.note.content"]
    local = Path(client.download_artifacts(out.run_id, "report.md", str(dst)))  # the parent's report, for reference
    assert mv.description.startswith("## Compression report: digits") and local.exists()
    model_dir = Path(f"{dst}/model")
    import mlflow.artifacts

    mlflow.artifacts.download_artifacts(f"models:/{REGISTRY}/{mv.version}", dst_path=str(model_dir))
    sig = yaml.safe_load((model_dir / "MLmodel").read_text())["signature"]
    graph = onnx.load(str(next(model_dir.glob("*.onnx")))).graph
    want = [{"name": i.name, "type": "tensor"} for i in graph.input]
    assert [{k: v for k, v in s.items() if k in ("name", "type")} for s in json.loads(sig["inputs"])] == want
    assert [s["tensor-spec"]["shape"] for s in json.loads(sig["inputs"])] == [[-1, 1, 8, 8]]
    return mv


def check_logged_models(client: MlflowClient, out, rows: dict) -> dict[str, str]:
    models = client.search_logged_models([out.experiment_id])
    by_name = {m.tags["slimray.candidate"]: m for m in models}
    assert set(by_name) == set(rows) and len(models) == len(rows)
    for name, m in by_name.items():
        metrics = {x.key: x.value for x in m.metrics or []}
        assert metrics["benchmark.test_acc"] == pytest.approx(rows[name]["test_acc"]), name
        assert m.params["kind"] == rows[name]["kind"]
    return {name: m.model_id for name, m in by_name.items()}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_lineage_of_a_registered_model(workdir):
    out = run_lineage(workdir)
    client = MlflowClient(tracking_uri=out.uri)
    digest = _data_digest(client, out.states["data"].trials[0].meta.run_id, workdir / "data")
    check_datasets(client, out, digest)
    rows = _bench_rows(client, out, workdir / "bench")
    first = check_version(client, out, rows, digest, workdir / "v1")
    ids = check_logged_models(client, out, rows)
    assert ids["quantize"] == first.source.removeprefix("models:/")  # the registered ONNX is a candidate

    again = run_lineage(workdir)  # fully cached: the same lineage on the new runs and version
    assert {st.status for st in again.states.values()} == {"cached"}
    check_datasets(client, again, digest)
    second = check_version(client, again, rows, digest, workdir / "v2")
    assert int(second.version) == int(first.version) + 1
    assert check_logged_models(client, again, rows) == ids  # reused, not logged again


def test_the_printed_link_opens_the_parent_run_in_the_training_view():
    """The console's last line: the run's page with the query MLflow 3.17's UI reads to open the
    training view (a new browser otherwise opens the GenAI overview); with a sqlite store, the
    command that serves it first."""
    page = "#/experiments/3/runs/abc?workflowType=machine_learning"
    assert session.open_it("http://10.0.0.5:5000/", "3", "abc") == f"Open it: http://10.0.0.5:5000/{page}"
    line = session.open_it("sqlite:////w/mlflow.db", "3", "abc")
    assert line == (
        "Open it: mlflow ui --backend-store-uri sqlite:////w/mlflow.db --host 127.0.0.1 --port 5000, "
        f"then http://127.0.0.1:5000/{page}"
    )


def test_signature_and_dataset_schema_of_a_multi_input_model():
    """A transformer's graph (int64 ``input_ids``/``attention_mask``, symbolic batch and sequence,
    a weight listed among the inputs as older exporters do) and its stacked text data."""
    import numpy as np
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from pipelines.store.lineage import dataset_entity
    from pipelines.store.registry import onnx_signature
    from tasks.core.types import Dataset

    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    weight = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 4])
    init = numpy_helper.from_array(np.ones(4, np.float32), "w")
    node = helper.make_node("Identity", ["w"], ["embedding"])
    graph = helper.make_graph([node], "g", [ids, mask, weight], [out], [init])
    sig = onnx_signature(helper.make_model(graph)).to_dict()
    assert [(s["name"], s["tensor-spec"]) for s in json.loads(sig["inputs"])] == [
        ("input_ids", {"dtype": "int64", "shape": [-1, -1]}),
        ("attention_mask", {"dtype": "int64", "shape": [-1, -1]}),
    ]
    assert json.loads(sig["outputs"])[0]["tensor-spec"] == {"dtype": "float32", "shape": [-1, 4]}

    x, y = torch.zeros(6, 2, 8, dtype=torch.long), torch.full((6,), -1)
    data = Dataset(
        "docstrings", x, y, x[:2], y[:2], x[:3], y[:3], 0, None, "embedding", ["input_ids", "attention_mask"]
    )
    entity = dataset_entity(data, "d" * 32, "slimray", '{"uri": "runs:/r/output"}')
    assert json.loads(entity.profile)["rows"] == {"train": 6, "val": 2, "test": 3}
    features = json.loads(json.loads(entity.schema)["mlflow_tensorspec"]["features"])
    assert features == [
        {"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1, 2, 8]}, "name": "input_ids,attention_mask"}
    ]


TWO_DATASETS = {
    "name": "two_datasets",
    "steps": {
        "data_a": {"task": "data", "params": {"source": "digits", "n_transfer": 0, "seed": 0}},
        "data_b": {"task": "data", "params": {"source": "digits", "n_transfer": 0, "seed": 1}},
        "data_c": {"task": "data", "params": {"source": "digits", "n_transfer": 0, "seed": 2}},  # not the model's
        "teacher": {
            "task": "train",
            "inputs": {"data": "data_a"},
            "params": {
                "model": {"_target_": "tasks.models.zoo.MLP", "hidden": [16]},
                "kind": "teacher",
                "optim": {"epochs": 1},
            },
        },
        "prune": {
            "task": "prune",
            "inputs": {"model": "teacher", "data": "data_b"},
            "params": {"method": "channel", "amount": 0.25, "finetune": {"epochs": 1}},
        },
        "benchmark": {
            "task": "benchmark",
            "inputs": {"models": ["teacher", "prune"], "data": "data_b", "selected": "prune"},
            "params": {"warmup": 1, "iters_b1": 3, "iters_b256": 2, "throughput_batch": 16},
        },
        "report": {
            "task": "report",
            "inputs": {"bench": "benchmark", "selected": "prune"},
            "params": {"registry_name": "two-data"},
        },
    },
}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_version_lists_the_datasets_its_model_was_made_from_each_by_digest(workdir):
    """Three datasets of one name (digits, three seeds): the pruned model was made from the
    teacher's data and its own fine-tuning data, not the third; two of one name stay two."""
    from omegaconf import OmegaConf

    from pipelines.config.compose import load_config

    overrides = [f"tracking.uri=sqlite:///{workdir}/mlflow.db"]
    cfg = load_config(overrides)
    cfg.pipeline = OmegaConf.create(TWO_DATASETS)
    spec, ray_cfg, tracking = session.validate(cfg)
    out = session.execute(cfg, spec, ray_cfg, tracking, overrides)
    assert out.exit_code == 0, {n: (s.status, s.note) for n, s in out.states.items()}
    client = MlflowClient(tracking_uri=out.uri)
    digest = {
        step: client.get_run(out.states[step].trials[0].meta.run_id).data.tags["slimray.dataset_digest"]
        for step in ("data_a", "data_b", "data_c")
    }
    assert len(set(digest.values())) == 3
    tags = client.get_model_version_by_alias("two-data", "candidate").tags
    assert tags["model"] == "prune"
    assert (tags["dataset"], tags["dataset_digest"]) == ("digits,digits", f"{digest['data_a']},{digest['data_b']}")
