"""What the registry records is what was verified and what was selected (real MLflow sqlite store,
real ONNX Runtime and OpenVINO, no Ray: the recorder publishes a step's ``Publication`` directly).

- A cached registration reuses a logged model only when EVERY file of it (``MLmodel``, the graph,
  ``extra_files/`` with ``serving.json`` and the tokenizer, the environment files) matches the
  signed file list recorded when it was logged; a tampered one is logged again, and
  ``slimray serve`` refuses a version whose files do not match its list, in one line.
- The version's tags and its logged model's card are those of the selected benchmark ROW,
  whichever runtime it was selected on.
- The version described is the one ``_register`` made, even when another driver moved the alias.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urlparse

import onnx
import pytest
from mlflow.tracking import MlflowClient
from onnx import TensorProto, helper

from pipelines.run.state import Context
from pipelines.scale import serve, serve_app
from pipelines.store import modelfiles, registry
from pipelines.store.recorder import RunRecorder
from tasks.core.types import Publication, Registration

FILES = {
    "serving.json": json.dumps({"task": "classification", "inputs": [], "text": False, "max_length": 0}).encode(),
    "tokenizer_config.json": b'{"model_max_length": 16}',
}


def _identity_onnx(width: int = 3) -> bytes:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "identity", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _recorder(uri: str, cls: type[RunRecorder] = RunRecorder) -> RunRecorder:
    """A recorder of a new pipeline execution (its own parent run) in the store at ``uri``."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("trust") or client.get_experiment(client.create_experiment("trust"))
    root = client.create_run(exp.experiment_id).info.run_id
    return cls(client, Context(uri, exp.experiment_id, root, 0, "c0ffee"), "node-1")


def _local(location: str) -> Path:
    """The folder of a logged model's artifacts in the local store (file:// URI)."""
    return Path(urlparse(location).path)


@pytest.fixture(scope="module")
def _module_store(tmp_path_factory):
    """One sqlite store for the module (creating one takes seconds); each test registers its own
    model name in it."""
    folder = tmp_path_factory.mktemp("registry")
    here = os.getcwd()
    os.chdir(folder)  # MLflow's ./mlruns for the experiment's artifacts
    try:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        _recorder(uri)
        yield uri
    finally:
        os.chdir(here)


@pytest.fixture
def store(_module_store, request):
    """(store URI, the first execution's recorder, the step run holding the publication, the
    test's registered model name)."""
    first = _recorder(_module_store)
    source = first.client.create_run(first.ctx.experiment_id).info.run_id
    name = "trust-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[-60:].strip("-")
    return _module_store, first, source, name


def _publish(rec: RunRecorder, source: str, name: str):
    """Publish the registration as the step run ``source`` holds it; the version made, with
    ``model_id`` set to its logged model (MLflow leaves it None on a version logged by
    ``log_model``, whose source names the model)."""
    pub = Publication(models=[Registration(name, _identity_onnx(), "candidate", source="", files=dict(FILES))])
    rec.publish(pub, source)
    mv = rec.client.get_model_version_by_alias(name, "candidate")
    found = re.search(r"m-[0-9a-f]{32}", str(mv.source))  # models:/m-… or that model's artifact folder
    mv._model_id = registry.model_id_of(mv) or (found[0] if found else None)
    assert mv.model_id, mv.source
    return mv


def test_an_untampered_cached_registration_reuses_the_logged_model_and_serves_verified(store):
    uri, first, source, name = store
    v1 = _publish(first, source, name)
    v2 = _publish(_recorder(uri), source, name)
    assert int(v2.version) == int(v1.version) + 1 and v2.model_id == v1.model_id  # reused, not logged again
    signed = modelfiles.read_files(v2.tags[modelfiles.FILES_TAG], v2.model_id, "test")
    assert {"MLmodel", "model.onnx", "extra_files/serving.json", "extra_files/tokenizer_config.json"} <= set(signed)
    served = serve_app.load_model(f"models:/{name}/{v2.version}", uri, 1)
    assert served.note == "" and served.sig.task == "classification"


@pytest.mark.parametrize("target", ["MLmodel", "extra_files/tokenizer_config.json", "extra_files/serving.json", "new"])
def test_a_tampered_logged_model_is_never_registered_again_nor_served(store, target, capsys):
    """Someone who can write artifacts edits one file of the logged model (or adds one): the
    next cached run logs the verified model again, and serve refuses the version made from it."""
    uri, first, source, name = store
    v1 = _publish(first, source, name)
    folder = _local(first.client.get_logged_model(v1.model_id).artifact_location)
    path = folder / ("extra_files/notes.txt" if target == "new" else target)
    path.write_bytes((path.read_bytes() if path.exists() else b"") + b"\n# edited\n")

    again = _recorder(uri)
    v2 = _publish(again, source, name)
    assert v2.model_id != v1.model_id  # a fresh logged model, not the tampered one
    versions = again.client.search_model_versions(f"name='{name}'")
    assert [v.version for v in versions if registry.model_id_of(v) == v1.model_id] == [v1.version]
    assert any(f"logged model {v1.model_id}" in line and "logged again" in line for line in again.console)
    served = serve_app.load_model(f"models:/{name}/{v2.version}", uri, 1)  # the fresh one verifies
    assert served.note == ""

    with pytest.raises(modelfiles.ModelFilesError) as info:  # the tampered version itself is refused
        serve_app.load_model(f"models:/{name}/{v1.version}", uri, 1)
    changed = path.relative_to(folder).as_posix()
    assert changed in str(info.value) and "\n" not in str(info.value)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        capsys.readouterr()
        assert serve.main([f"model=models:/{name}/{v1.version}"]) == 1  # before Ray starts
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "refusing to serve" in err and changed in err


def test_the_unsigned_logged_model_tag_alone_is_not_trusted(store):
    """The source run's ``slimray.logged_model.*`` tag re-pointed at a model logged by hand (same
    graph, no signed file list): not reused; the version is a freshly logged, verified model."""
    import mlflow

    uri, first, source, name = store
    v1 = _publish(first, source, name)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=first.ctx.experiment_id):
        planted = mlflow.onnx.log_model(
            onnx.load_from_string(_identity_onnx()), name="planted", pip_requirements=["onnxruntime"]
        ).model_id
    tag = next(k for k in first.client.get_run(source).data.tags if k.startswith("slimray.logged_model."))
    first.client.set_tag(source, tag, planted)
    v2 = _publish(_recorder(uri), source, name)
    assert v2.model_id not in (planted, None) and v2.model_id != v1.model_id
    modelfiles.read_files(v2.tags[modelfiles.FILES_TAG], v2.model_id, "test")  # signed for what it is


def test_a_version_without_a_signed_list_or_with_a_forged_one(store):
    """A version registered by hand is served with a note saying its files were not verified;
    a list that does not verify (forged, or signed for another logged model) is refused."""
    uri, first, source, name = store
    v1 = _publish(first, source, name)
    v2 = _publish(_recorder(uri), source, name)  # the same logged model
    client = first.client
    client.delete_model_version_tag(name, v2.version, modelfiles.FILES_TAG)
    note = serve_app.load_model(f"models:/{name}/{v2.version}", uri, 1).note
    assert "files not verified" in note and modelfiles.FILES_TAG in note
    body = json.loads(v1.tags[modelfiles.FILES_TAG])
    body["files"]["MLmodel"] = "0" * 64
    client.set_model_version_tag(name, v2.version, modelfiles.FILES_TAG, json.dumps(body))
    with pytest.raises(modelfiles.ModelFilesError, match="does not verify"):
        serve_app.load_model(f"models:/{name}/{v2.version}", uri, 1)
    for bad in ("{", "[]", '{"files": {}, "signature": "é"}'):
        client.set_model_version_tag(name, v2.version, modelfiles.FILES_TAG, bad)
        with pytest.raises(modelfiles.ModelFilesError):
            serve_app.load_model(f"models:/{name}/{v2.version}", uri, 1)


class _Racing(RunRecorder):
    """A recorder beside which another driver moves the alias right after each registration."""

    def _register(self, *args, **kwargs):
        made = super()._register(*args, **kwargs)
        name = getattr(args[0], "name", args[0])  # the registration (or, before, its name)
        import mlflow

        mlflow.set_tracking_uri(self.ctx.uri)
        with mlflow.start_run(experiment_id=self.ctx.experiment_id):
            info = mlflow.onnx.log_model(
                onnx.load_from_string(_identity_onnx(4)),
                name="other",
                registered_model_name=name,
                pip_requirements=["onnxruntime"],
            )
        self.client.set_registered_model_alias(name, "candidate", str(info.registered_model_version))
        return made


def test_the_version_described_is_the_one_registered_not_the_alias(store):
    uri, _, source, name = store
    rec = _recorder(uri, _Racing)
    card = {"name": "student", "metrics": {"test_acc": 0.9}, "params": {"runtime": "onnxruntime", "selected": "true"}}
    reg = Registration(name, _identity_onnx(), "candidate", source="student", files=dict(FILES))
    rec.publish(Publication(description="ours", models=[reg], candidates=[card]), source)
    ours = rec.registered[0].rsplit(" v", 1)[1]
    other = rec.client.get_model_version_by_alias(name, "candidate")
    assert other.version != ours  # the other driver's alias move happened
    mine = rec.client.get_model_version(name, ours)
    assert mine.tags["model"] == "student" and mine.tags["test_acc"] == "0.9" and mine.description == "ours"
    assert "model" not in other.tags and not other.description


@pytest.mark.slow  # ~15 s idle, a minute on 2 loaded cores: an ONNX export and two runtimes timed
def test_the_version_says_what_was_selected_on_each_runtime(store):
    """A real benchmark measures every candidate on ONNX Runtime and OpenVINO; whichever row is
    selected (forced here: which runtime wins is the CPU's call), the version's tags
    (``runtime``, the figures, ``selected``, ``model``) and its logged model's card are that row's."""
    pytest.importorskip("openvino", reason="the nlp extra installs openvino")
    from tasks.core.context import StepContext
    from tasks.models.build import load_model
    from tasks.runtime.onnx import data_onnx
    from tasks.runtime.openvino import runtime_of
    from tasks.steps import benchmark, report
    from tests.test_benchmark import make_data, make_model

    uri, _, _, name = store
    data = make_data()
    student = make_model(data, "student", "student_kd", [8])
    student.onnx = data_onnx(load_model(student), data)  # exported once, for both runtimes and the report
    cfg = benchmark.BenchmarkConfig(
        warmup=1, iters_b1=3, iters_b256=2, throughput_batch=8, runtimes=["onnxruntime", "openvino"]
    )
    bench = benchmark.run([student], data, cfg=cfg, ctx=StepContext())
    for chosen in ("student@openvino", "student"):
        for r in bench.candidates:
            r.selected = r.name == chosen
        bench.targets.selected = chosen
        row = bench.row(chosen)
        assert (
            row is not None
            and row.throughput_b256
            != bench.row("student@openvino" if chosen == "student" else "student").throughput_b256
        )
        out = report.run(bench, candidates=[student], cfg=report.ReportConfig(registry_name=name), ctx=StepContext())
        rec = _recorder(uri)
        rec.publish(out.publish)
        mv = rec.client.get_model_version_by_alias(name, "candidate")
        tags, runtime = mv.tags, runtime_of(row)
        assert tags["slimray.runtime"] == runtime and tags["runtime"].split()[0] == runtime, (chosen, tags)
        assert tags["model"] == chosen and tags["selected"] == "true"
        assert float(tags["throughput_b256"]) == pytest.approx(row.throughput_b256, rel=1e-5)
        assert float(tags["latency_ms_p50_b1"]) == pytest.approx(row.latency_ms_p50_b1, rel=1e-5)
        card = rec.client.get_logged_model(registry.model_id_of(mv))
        assert card.tags["slimray.candidate"] == chosen and card.params["runtime"].split()[0] == runtime
        figures = {m.key: m.value for m in card.metrics or []}
        assert figures["benchmark.throughput_b256"] == pytest.approx(row.throughput_b256)
