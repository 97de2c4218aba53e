"""Requests that cannot hurt a replica, on real Ray Serve with a model from a real MLflow registry:
one test per request class (oversize body, slow body, deep nesting, too many values, booleans,
non-finite values, wrong route, missing token). Each is a 4xx (or 504 for a stalled body) with a
one-line message, and the same replica answers a good request afterwards."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
from test_serve import _free_port, _get, _post, _register

from pipelines.scale.serve import ServeConfig, build_app
from tasks.serving.limits import BadRequest, Limits, parse, texts_of

TOKEN = {"Authorization": "Bearer s3cret"}


def test_json_limits_without_a_server():
    lim = Limits(max_depth=4, max_elements=100)
    assert parse(b'{"inputs": [[1, 2.5e3], [3, -4]], "s": "[[[[[[true"}', lim)["inputs"][1] == [3, -4]
    for body, status, words in [
        (b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, "max_depth=4"),  # RecursionError in json
        (b'{"inputs": [' + b"1," * 200 + b"1]}", 400, "max_elements=100"),
        (b'{"inputs": [[1, true]]}', 422, "'true' is not allowed"),
        (b'{"inputs": [[1, null]]}', 422, "'null'"),
        (b'{"inputs": [[1, Infinity]]}', 422, "'Infinity'"),
        (b'{"inputs": [[1, -Infinity]]}', 422, "'-Infinity'"),
        (b"[1]", 422, "JSON object"),
        (b'{"inputs": [1', 400, "malformed JSON"),
    ]:
        with pytest.raises(BadRequest, match=words) as e:
            parse(body, lim)
        assert e.value.status == status
    lim = Limits(max_rows=2, max_text_chars=5, max_batch_chars=8)
    assert texts_of({"texts": ["ab", "cde"]}, lim) == ["ab", "cde"]
    for doc, words in [
        ({"texts": ["a", "b", "c"]}, "max_request_rows=2"),
        ({"texts": ["abcdef"]}, "max_text_chars=5"),
        ({"texts": ["abcde", "abcd"]}, "max_batch_chars=8"),
        ({"texts": ["a", 1]}, "list of strings"),
        ({"texts": []}, "list of strings"),
    ]:
        with pytest.raises(BadRequest, match=words):
            texts_of(doc, lim)


def _stalled_body(port: int) -> tuple[int, float]:
    """A client that announces 1,000 bytes, sends 10 and stops: the status and the seconds it took."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        head = (
            "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: {TOKEN['Authorization']}\r\nContent-Length: 1000\r\n\r\n"
        )
        s.sendall(head.encode() + b'{"inputs":')
        answer = s.recv(4096).decode(errors="replace")
    return int(answer.split(" ", 2)[1]), time.monotonic() - t0


@pytest.mark.slow
def test_every_bad_request_class_is_a_4xx_and_the_replica_lives(ray_local, workdir):
    from ray import serve

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    _register(uri)
    port = _free_port()
    cfg = ServeConfig(
        model="models:/tiny@candidate",
        port=port,
        max_body_bytes=20_000,
        max_json_depth=4,
        max_json_elements=2_000,
        request_timeout_s=3.0,
        auth_token="s3cret",
        cpus_per_replica=0.5,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 6.0})
    try:
        serve.run(build_app(cfg, uri), name="test-limits", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        good = json.dumps({"inputs": [[0.5] * 6]}).encode()
        assert _post(f"{url}/predict", good, TOKEN)[0] == 200
        cases = {
            "oversize body": (b'{"inputs": [[' + b"1.0," * 10_000 + b"1.0]]}", 413, "max_body_bytes=20000"),
            "deep nesting": (b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "max_depth=4"),
            "too many values": (json.dumps({"inputs": [[1.0] * 6] * 400}).encode(), 400, "max_elements=2000"),
            "booleans": (b'{"inputs": [[1, 2, 3, 4, 5, true]]}', 422, "'true' is not allowed"),
            "non-finite": (b'{"inputs": [[1, 2, 3, 4, 5, Infinity]]}', 422, "'Infinity'"),
            "texts to an array model": (b'{"texts": ["hello"]}', 422, '{"inputs"'),
        }
        for what, (body, code, words) in cases.items():
            status, answer = _post(f"{url}/predict", body, TOKEN)
            assert status == code and words in answer["error"] and "\n" not in answer["error"], (what, answer)
        status, answer = _post(f"{url}/embed", good, TOKEN)  # wrong route: names the right one
        assert status == 404 and "use POST /predict" in answer["error"]
        status, answer = _post(f"{url}/predict", good)  # no token
        assert status == 401 and "bearer token" in answer["error"]
        assert _post(f"{url}/predict", good, {"Authorization": "Bearer wrong"})[0] == 401
        status, took = _stalled_body(port)  # a body that never completes: the request timeout ends it
        assert status == 504 and took < 6.0, (status, took)
        h = _get(f"{url}/health")
        assert h["name"] == "tiny" and h["version"] == "1" and h["route"] == "/predict"
        status, out = _post(f"{url}/predict", good, TOKEN)  # the same replica, alive and well
        assert status == 200 and np.asarray(out["logits"]).shape == (1, 3)
        assert serve.status().applications["test-limits"].status == "RUNNING"
    finally:
        serve.shutdown()
