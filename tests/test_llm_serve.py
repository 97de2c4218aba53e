"""OpenAI-compatible serving of a causal LM (issue 31): the registered files load back into a served
model, the protocol refuses bad bodies with one-line OpenAI errors and detokenizes safely, and ONE
Ray Serve app of the tiny random Llama answers the official ``openai`` client unchanged: streaming
chat, completions, ``stop``, ``max_tokens``, seeds, usage, concurrent streams equal to in-process
greedy generation, bad requests as 4xx with the replica alive, and an early-closed stream freeing
its engine slot."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tasks.llm.export import export_decoder
from tasks.llm.model import build_causal_lm, config_dict, lm_state, load_lm_state, tokenizer_files
from tasks.llm.served import GENERATION_FILE, lm_files, load_served
from tasks.llm.types import CausalLM
from tasks.serving.limits import Limits
from tasks.serving.openai_api import Api, ApiError, TextStream
from tests.lm_models import tiny_llama, tiny_tokenizer

NAME, TOKEN, CONTEXT, CAP = "tiny-chat", "s3cret", 2048, 1500
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> CausalLM:
    """The tiny Llama as a registered variant (weights scaled up so greedy tokens vary)."""
    source = tiny_llama(tmp_path_factory.mktemp("src"), max_position_embeddings=CONTEXT)
    net = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    return CausalLM(NAME, config_dict(net), state_dict=lm_state(net), tokenizer=tokenizer_files(tiny_tokenizer()))


def write(files: dict[str, bytes], out: Path) -> Path:
    out.mkdir(exist_ok=True)
    for name, body in files.items():
        (out / name).write_bytes(body)
    return out


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    """A registered version's files."""
    return write(lm_files(model), tmp_path_factory.mktemp("registered"))


@pytest.fixture(scope="module")
def served(folder):
    return load_served(folder, "torch", 1)


def greedy_text(served, prompt_ids: list[int], n: int) -> str:
    """The in-process greedy answer of ``n`` tokens, as text (eos and what follows dropped, and an unfinished
    UTF-8 character at the end, which the server never sends)."""
    out = served.decoder.generate(np.array([prompt_ids]), n, served.eos_ids[0])[0].tolist()
    out = out[: out.index(served.eos_ids[0])] if served.eos_ids[0] in out else out
    return served.tokenizer.decode(out, skip_special_tokens=True).rstrip("\ufffd")


def chat_ids(served, messages) -> list[int]:
    return Api(NAME, served.tokenizer, CONTEXT, CAP).prompt_ids("chat", {"messages": messages})


def test_registered_files_load_back(model, folder, served, tmp_path):
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "slimray_lm.json", GENERATION_FILE, "tokenizer.json"} <= names
    assert served.name == NAME and served.context == CONTEXT and served.chat_template and served.eos_ids == [0]
    for missing in ("model.safetensors", GENERATION_FILE):
        for p in folder.iterdir():
            if p.name != missing:
                (tmp_path / missing).mkdir(exist_ok=True)
                (tmp_path / missing / p.name).write_bytes(p.read_bytes())
        with pytest.raises(ValueError, match=missing):
            load_served(tmp_path / missing, "torch", 1)
    net = load_lm_state(build_causal_lm(model.config), model.state_dict)
    graph = CausalLM(NAME, model.config, format="onnx", files=export_decoder(net), tokenizer=model.tokenizer)
    ort = load_served(write(lm_files(graph), tmp_path / "onnx"), "onnxruntime", 1)  # an exported variant's runtime
    ids = np.array([served.tokenizer("The cat sat on")["input_ids"]])
    assert ort.decoder.generate(ids, 12, 0).tolist() == served.decoder.generate(ids, 12, 0).tolist()


def test_protocol_refuses_bad_fields(served):
    api = Api(NAME, served.tokenizer, CONTEXT, CAP)
    ok = api.parse(
        "completion", {"model": NAME, "prompt": ["The cat"], "max_tokens": 4, "stop": "x", "seed": 1, "n": 1}
    )
    assert ok.max_tokens == 4 and ok.stop == ["x"] and ok.prompt_ids == served.tokenizer("The cat")["input_ids"]
    base = {"model": NAME, "messages": CHAT}
    for body, status, words in [
        ({**base, "model": "gpt-4"}, 404, '"gpt-4": not served here'),
        ({**base, "max_tokens": "8"}, 400, 'max_tokens: "8" is not a int'),
        ({**base, "max_tokens": True}, 400, "max_tokens: true"),
        ({**base, "temperature": 3}, 400, "temperature: 3 is not in [0, 2]"),
        ({**base, "n": 2}, 400, "n: 2"),
        ({**base, "presence_penalty": 0.5}, 400, "presence_penalty: 0.5 is not supported"),
        ({**base, "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
        ({**base, "logit_bias": {}}, 400, "logit_bias: unknown field"),
        ({**base, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
        ({**base, "max_tokens": CAP + 1}, 400, f"max_tokens={CAP + 1} exceeds max_tokens_cap={CAP}"),
        ({"model": NAME, "prompt": ""}, 400, "prompt: a non-empty string"),
    ]:
        kind = "completion" if "prompt" in body else "chat"
        with pytest.raises(ApiError, match=words.replace("[", r"\[").replace("(", r"\(")) as e:
            api.parse(kind, body)
        assert e.value.status == status and "\n" not in str(e.value)
    small = Api(NAME, served.tokenizer, 40, CAP)
    with pytest.raises(ApiError, match=r"prompt of \d+ tokens plus max_tokens=30 exceeds the context of 40"):
        small.parse("chat", {**base, "max_tokens": 30})
    from tasks.serving.llm_deployment import parse_json

    assert parse_json(b'{"stream": true, "stop": null}', Limits()) == {"stream": True, "stop": None}
    with pytest.raises(ApiError, match="malformed JSON"):
        parse_json(b'{"model": ', Limits())


def test_text_stream_never_splits_a_character_and_cuts_at_stop(served):
    tok = served.tokenizer
    ids = tok("the café — 日本 ok")["input_ids"]
    pieces = TextStream(tok, [], [], [0])
    out = [pieces.push(i) for i in ids] + [pieces.flush()]
    assert "".join(out) == "the café — 日本 ok" and not any("\ufffd" in p for p in out)
    stop = TextStream(tok, [], ["日本"], [0])
    text = "".join(stop.push(i) for i in ids) + stop.flush()
    assert text == "the café — " and stop.stopped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url(folder, _ray_session):
    """ONE Serve app of the served model on a free loopback port (token auth on), torn down at the end."""
    import ray
    from ray import serve

    from tasks.serving.llm_deployment import LLMServer

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    port = _free_port()
    cfg = dict(
        threads=1, max_batch=8, max_tokens_cap=CAP, request_timeout_s=20.0, auth_token=TOKEN, max_body_bytes=20_000
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 40.0})
    app = LLMServer.options(max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.5})  # type: ignore[attr-defined]
    serve.run(
        app.bind(cfg, partial(load_served, folder, "torch"), {"name": NAME, "version": "1"}),
        name="llm",
        route_prefix="/",
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.delete("llm")
        serve.shutdown()


@pytest.fixture(scope="module")
def client(url):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=30)


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json", **(headers or {})}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
        return json.loads(r.read())


def test_openai_client_completion_chat_stop_and_usage(client, served):
    assert [m.id for m in client.models.list().data] == [NAME]
    prompt = "The cat sat on"
    ids = served.tokenizer(prompt)["input_ids"]
    want = greedy_text(served, ids, 12)
    done = client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
    assert done.choices[0].text == want and done.choices[0].finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (
        len(ids),
        12,
        len(ids) + 12,
    )
    stop = next(want[i : i + 2] for i in range(len(want) // 2, len(want)) if "\ufffd" not in want[i : i + 2])
    cut = client.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == want[: want.index(stop)] and cut.choices[0].finish_reason == "stop"
    want = greedy_text(served, chat_ids(served, CHAT), 10)
    chunks = list(
        client.chat.completions.create(
            model=NAME, messages=CHAT, max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10 and chunks[-1].usage.prompt_tokens == len(chat_ids(served, CHAT))
    whole = client.chat.completions.create(model=NAME, messages=CHAT, max_completion_tokens=10, temperature=0)
    assert whole.choices[0].message.content == want and whole.object == "chat.completion"
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 10


def test_seeds_reproduce(client):
    def sample(seed: int) -> str:
        out = client.completions.create(model=NAME, prompt="A dog", max_tokens=16, temperature=1.0, seed=seed)
        return out.choices[0].text

    first = sample(7)
    assert sample(7) == first
    assert any(sample(s) != first for s in (8, 9, 10))


def test_four_concurrent_streams_equal_in_process_greedy(client, served):
    prompts = ["The dog ran", "Rivers flow", "A list holds", "Computers store numbers"]
    texts: dict[int, str] = {}

    def stream(i: int) -> None:
        chunks = client.completions.create(model=NAME, prompt=prompts[i], max_tokens=24, temperature=0, stream=True)
        texts[i] = "".join(c.choices[0].text for c in chunks)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert texts == {i: greedy_text(served, served.tokenizer(p)["input_ids"], 24) for i, p in enumerate(prompts)}


def test_bad_requests_are_openai_errors_and_the_replica_lives(client, url):
    import openai

    auth = {"Authorization": f"Bearer {TOKEN}"}
    good = {"model": NAME, "prompt": "The cat", "max_tokens": 2}
    long = "the cat sat " * 300  # 1,202 tokens
    cases = [
        (b'{"model": "tiny-chat", "prompt": ', 400, "malformed JSON", None),
        (json.dumps({**good, "model": "nope"}).encode(), 404, "not served here", "model_not_found"),
        (json.dumps({**good, "max_tokens": "2"}).encode(), 400, "max_tokens", None),
        (
            json.dumps({**good, "prompt": long, "max_tokens": CAP}).encode(),
            400,
            "exceeds the context",
            "context_length_exceeded",
        ),
        (json.dumps({**good, "max_tokens": CAP + 1}).encode(), 400, f"max_tokens_cap={CAP}", None),
        (b'{"prompt": "' + b"a" * 30_000 + b'"}', 413, "max_body_bytes=20000", None),
    ]
    for body, status, words, code in cases:
        got, answer = _post(f"{url}/v1/completions", body, auth)
        error = answer["error"]
        assert got == status and words in error["message"] and "\n" not in error["message"], (words, answer)
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert _post(f"{url}/v1/completions", json.dumps(good).encode())[0] == 401
    status, answer = _post(f"{url}/v1/embeddings", json.dumps(good).encode(), auth)
    assert status == 404 and "/v1/embeddings: Not Found" in answer["error"]["message"]
    with pytest.raises(
        openai.BadRequestError, match=r"prompt of \d+ tokens plus max_tokens=1400 exceeds the context of 2048"
    ):
        client.completions.create(model=NAME, prompt=long, max_tokens=1400)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert client.completions.create(**good).usage.completion_tokens == 2


def test_closing_a_stream_early_frees_its_slot(client, url):
    before = _health(url)["engine"]["tokens"]
    stream = client.completions.create(model=NAME, prompt="Write a poem", max_tokens=1400, temperature=0, stream=True)
    with stream as chunks:  # greedy: no eos in its first 1,400 tokens
        for i, chunk in enumerate(chunks):
            assert chunk.choices[0].finish_reason is None
            if i == 2:
                break
    deadline = time.monotonic() + 10
    while _health(url)["engine"]["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    engine = _health(url)["engine"]
    assert engine["active"] == 0 and engine["waiting"] == 0
    assert engine["tokens"] - before < 1400  # it stopped well before its max_tokens
