"""``ingress=grpc`` on real Ray Serve, a real MLflow registry and ONNX Runtime: ``slimray.Model/Predict``
answers what ``POST /predict`` answers, every bad request is a gRPC status with a one-line detail
(the replica keeps serving), the bearer token is required, and the config refuses the ingress
without a token (Ray 2.60's gRPC proxy listens on every interface)."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import torch
from google.protobuf.wrappers_pb2 import BytesValue

from pipelines.scale.serve import ServeConfig, build_app, load_config, start_options
from tasks.serving.grpc_ingress import metadata, stub
from tests.test_serve import _free_port, _post, _register


def test_grpc_ingress_needs_a_token_and_names_why():
    with pytest.raises(ValueError, match=r"ingress: 'grpc' needs auth_token \(Serve's gRPC proxy listens on \[::\]"):
        load_config(["ingress=grpc"])
    cfg = load_config(["ingress=grpc", "auth_token=t", "grpc_port=9123"])
    options = start_options(cfg)
    assert options["grpc_options"]["port"] == 9123
    assert options["grpc_options"]["grpc_servicer_functions"] == ["tasks.serving.grpc_ingress.add_servicer_to_server"]
    assert "grpc_options" not in start_options(load_config([]))  # the HTTP proxy alone by default


@pytest.mark.slow
def test_grpc_predict_matches_http_and_bad_calls_get_status_codes(ray_local, workdir):
    from ray import serve

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    model = _register(uri)
    cfg = ServeConfig(
        model="models:/tiny@candidate",
        port=_free_port(),
        grpc_port=_free_port(),
        ingress="grpc",
        auth_token="s3cret",
        max_request_rows=16,
        cpus_per_replica=0.5,
    )
    serve.start(**start_options(cfg))
    try:
        serve.run(build_app(cfg, uri), name="grpc-app", route_prefix="/")
        x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
        body = json.dumps({"inputs": x.tolist()}).encode()
        channel = grpc.insecure_channel(f"127.0.0.1:{cfg.grpc_port}")
        predict, embed = stub(channel, "Predict"), stub(channel, "Embed")
        answer = json.loads(predict(BytesValue(value=body), metadata=metadata("grpc-app", "s3cret"), timeout=30).value)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert np.allclose(answer["logits"], ref, atol=1e-5) and answer["classes"] == ref.argmax(1).tolist()
        status, http = _post(f"http://127.0.0.1:{cfg.port}/predict", body, {"Authorization": "Bearer s3cret"})
        assert status == 200 and http == answer  # the same answer on both ingresses
        bad = [
            (predict, b'{"inputs": [[1, 2, 3]]}', "s3cret", grpc.StatusCode.INVALID_ARGUMENT),  # wrong shape
            (predict, b'{"inputs": [[1, true, 3, 4, 5, 6]]}', "s3cret", grpc.StatusCode.INVALID_ARGUMENT),
            (predict, b"[" * 50 + b"]" * 50, "s3cret", grpc.StatusCode.INVALID_ARGUMENT),  # nesting
            (predict, json.dumps({"inputs": [[0.0] * 6] * 17}).encode(), "s3cret", grpc.StatusCode.RESOURCE_EXHAUSTED),
            (predict, body, "wrong", grpc.StatusCode.UNAUTHENTICATED),
            (predict, body, "", grpc.StatusCode.UNAUTHENTICATED),
            (embed, body, "s3cret", grpc.StatusCode.UNIMPLEMENTED),  # a classifier: the detail names Predict
        ]
        for call, payload, token, code in bad:
            with pytest.raises(grpc.RpcError) as err:
                call(BytesValue(value=payload), metadata=metadata("grpc-app", token), timeout=30)
            assert err.value.code() == code, (payload[:40], token, err.value.code(), err.value.details())
            assert err.value.details() and "\n" not in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            embed(BytesValue(value=body), metadata=metadata("grpc-app", "s3cret"), timeout=30)
        assert "slimray.Model/Predict" in err.value.details()
        again = predict(BytesValue(value=body), metadata=metadata("grpc-app", "s3cret"), timeout=30)
        assert json.loads(again.value) == answer  # the replica survived every bad call
        channel.close()
    finally:
        serve.shutdown()
