"""A version registered for OpenVINO (tag ``slimray.runtime``, set when the benchmark selected an
``@openvino`` row) is served on OpenVINO: the served answers equal the model's, ``/health`` names
the runtime, and ``serve.runtime`` overrides it. Real Ray Serve, MLflow registry, ORT and OpenVINO."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.scale.serve import ServeConfig, build_app, load_config, resolve, start_options
from tasks.runtime.onnx import to_onnx
from tasks.serving.model import ServedModel
from tests.test_serve import _free_port, _get, _post, _register

pytest.importorskip("openvino", reason="the nlp extra (make install-nlp) installs OpenVINO")


def test_openvino_session_answers_as_onnx_runtime():
    from tasks.models.zoo import MLP

    torch.manual_seed(0)
    model = MLP([6], 3, [32]).eval()
    data = to_onnx(model, torch.randn(2, 6))
    x = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    ov, ort = ServedModel(data, None, 1, runtime="openvino"), ServedModel(data, None, 1)
    assert ov.sig.inputs == ort.sig.inputs  # the signature read from OpenVINO's inputs matches ORT's
    name = ort.sig.inputs[0]["name"]
    assert np.allclose(ov.run({name: x}), ort.run({name: x}), atol=1e-5)
    assert ov.session.get_providers()[0].startswith("OpenVINO CPU")
    with pytest.raises(ValueError, match="runtime 'tensorrt' is not one of"):
        ServedModel(data, None, 1, runtime="tensorrt")
    with pytest.raises(ValueError, match="runtime: 'tensorrt' is not onnxruntime or openvino"):
        load_config(["runtime=tensorrt"])


@pytest.mark.slow
def test_a_version_selected_on_openvino_is_served_on_openvino(ray_local, workdir):
    import mlflow
    from ray import serve

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    model = _register(uri)
    assert resolve("models:/tiny@candidate", uri)["runtime"] == "onnxruntime"  # no tag: ORT
    mlflow.MlflowClient(uri).set_model_version_tag("tiny", "1", "slimray.runtime", "openvino")
    assert resolve("models:/tiny@candidate", uri)["runtime"] == "openvino"
    cfg = ServeConfig(model="models:/tiny@candidate", port=_free_port(), cpus_per_replica=0.5)
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    serve.start(**start_options(cfg))
    try:
        for override, runtime in (("", "openvino"), ("onnxruntime", "onnxruntime")):
            cfg.runtime = override
            serve.run(build_app(cfg, uri), name="rt", route_prefix="/")
            health = _get(f"http://127.0.0.1:{cfg.port}/health")
            assert health["runtime"] == runtime and health["version"] == "1", health
            status, out = _post(f"http://127.0.0.1:{cfg.port}/predict", json.dumps({"inputs": x.tolist()}).encode())
            assert status == 200 and np.allclose(out["logits"], ref, atol=1e-4)
            serve.delete("rt")
    finally:
        serve.shutdown()
