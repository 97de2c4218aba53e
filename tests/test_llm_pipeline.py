"""``experiment=llm`` end to end on a tiny random Llama written with ``save_pretrained``: the teacher
folder, its text logged as an MLflow dataset, a depth-pruned student healed on the cached top-k
log-probabilities, ONNX with a KV cache, NNCF and MatMulNBits weight-only variants, and the benchmark
that measures every variant on every runtime against the torch teacher and selects one."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers", reason="the nlp extra")
pytest.importorskip("nncf", reason="the nlp extra")

from tests.lm_models import tiny_llama  # noqa: E402

BENCH = "pipeline.steps.benchmark.params"


def tiny_llm(folder, workdir, *extra: str) -> list[str]:
    """experiment=llm at test size: a few documents and rows, short prompts, one timing round."""
    return [
        "experiment=llm",
        f"teacher.path={folder}",
        f"tracking.uri=sqlite:///{workdir}/mlflow.db",
        *(f"data.{k}" for k in ("eval_files=4", "calib_files=2", "distill_files=4", "max_doc_tokens=64")),
        *(f"data.{k}" for k in ("seq_len=32", "calib_rows=4", "distill_rows=8", "prompts=3")),
        "pipeline.steps.depth.params.layers=3",
        "pipeline.steps.teacher_topk.params.k=16",
        "pipeline.steps.healed.params.max_steps=2",
        "pipeline.steps.width_healed.params.max_steps=2",
        *(f"{BENCH}.{k}" for k in ("prompt_tokens=48", "new_tokens=6", "batch=2", "rounds=1", "window=64")),
        *(f"{BENCH}.{k}" for k in ("agree_prompts=2", "agree_tokens=6")),
        *extra,
    ]


def _run(overrides):
    from pipelines.config.compose import load_config
    from pipelines.run import session

    cfg = load_config(overrides)
    spec, ray_cfg, tracking = session.validate(cfg)
    out = session.execute(cfg, spec, ray_cfg, tracking, overrides)
    assert out.exit_code == 0, {n: (s.status, s.note) for n, s in out.states.items()}
    return out


def _run_id(out, step: str) -> str:
    st = out.states[step]
    return st.trials[st.selected].meta.run_id


@pytest.mark.slow
def test_llm_end_to_end_on_a_tiny_llama(workdir, ray_local):
    from mlflow.tracking import MlflowClient

    folder = tiny_llama(workdir / "tiny-llama")
    out = _run(tiny_llm(folder, workdir))
    client = MlflowClient(tracking_uri=out.uri)
    report = json.loads(open(client.download_artifacts(_run_id(out, "benchmark"), "llm.json", str(workdir))).read())
    rows = {(r["name"], r["runtime"]): r for r in report["variants"]}
    expected = {("teacher", "torch"), ("teacher_onnx", "onnxruntime"), ("teacher_onnx", "openvino")}
    expected |= {(n, "openvino") for n in ("int8", "int4", "int4_awq", "healed_int8")}
    expected |= {("ort_int4", "onnxruntime"), ("ort_int4", "openvino"), ("healed_onnx", "onnxruntime")}
    expected |= {("width_onnx", "onnxruntime")}
    assert expected <= set(rows)
    ref = rows[("teacher", "torch")]
    assert report["reference"] == "teacher_torch_fp32" and ref["ppl_rel"] == 0 and ref["next_token_agree"] == 1
    # the exported graph with its KV cache is the same model on both runtimes
    for runtime in ("onnxruntime", "openvino"):
        row = rows[("teacher_onnx", runtime)]
        assert row["next_token_agree"] >= 0.99 and row["greedy_agree"] == 1.0
        assert abs(row["ppl_rel"]) < 1e-3
    # (on a model this small the graph's XML outweighs its weights: the weights' precision says what changed)
    assert set(rows[("int8", "openvino")]["compression"]["weights"]) == {"u8"}
    assert "u4" in rows[("int4", "openvino")]["compression"]["weights"]
    assert rows[("int4", "openvino")]["size_bytes"] < rows[("int8", "openvino")]["size_bytes"]
    assert rows[("int8", "openvino")]["size_bytes"] < rows[("teacher_onnx", "openvino")]["size_bytes"]
    assert rows[("healed_onnx", "onnxruntime")]["size_bytes"] < rows[("teacher_onnx", "onnxruntime")]["size_bytes"]
    assert rows[("width_onnx", "onnxruntime")]["size_bytes"] < rows[("teacher_onnx", "onnxruntime")]["size_bytes"]
    selected = [r for r in report["variants"] if r["selected"]]
    assert len(selected) == 1 and not selected[0]["rejected"]
    for r in report["variants"]:
        assert r["decode_tok_s_b1_t2"] > 0 and r["ttft_ms_p48_t2"] > 0 and 0 < r["bandwidth_share"]
        assert r["ppl_ci95"][0] <= r["ppl"] <= r["ppl_ci95"][1]
        if r["rejected"]:  # the gate names what failed
            assert "agreement" in r["rejected"] or "perplexity" in r["rejected"]
    # the text is an MLflow dataset with its digest, linked to the steps that read it
    data_run = client.get_run(_run_id(out, "data"))
    (dataset,) = [d.dataset for d in data_run.inputs.dataset_inputs]
    assert dataset.name.startswith("lm_text-") and len(dataset.digest) == 32
    assert json.loads(dataset.profile)["eval_docs"] == 4
    # the healed student has the 3 layers the depth step kept and a learning curve
    healed = client.get_run(_run_id(out, "healed"))
    assert "kd_loss" in healed.data.metrics and "ppl" in healed.data.metrics
    _check_registered(client, out.uri, selected[0])


def _check_registered(client, uri: str, row: dict) -> None:
    """The selected variant is llm@candidate with what serving needs, and serves the tokens it was measured with."""
    import asyncio

    import numpy as np

    from pipelines.scale.serve import resolve
    from pipelines.scale.serve_app import load_lm
    from tasks.llm.engine import Engine, Sampling

    pinned = resolve("models:/llm@candidate", uri)
    assert pinned["kind"] == "causal_lm" and pinned["runtime"] == row["runtime"]
    mv = client.get_model_version("llm", pinned["version"])
    assert mv.tags["model"] == row["name"] and row["name"] in mv.tags["recipe"]  # what it is, how it was made
    served = load_lm(pinned["uri"], uri, 1, runtime=row["runtime"])
    assert served.note == "" and served.chat_template and served.eos_ids  # files verified; chat and stop known
    from tasks.llm.text import render_chat

    ids = render_chat(served.tokenizer, "Why is the sky blue?")  # as the chat route renders it
    want = served.decoder.generate(np.array([ids]), 5)[0].tolist()
    got = asyncio.run(Engine(served.decoder, []).generate(ids, Sampling(max_tokens=5, temperature=0)))
    assert [t.id for t in got] == want
    cut = next((i for i, t in enumerate(want) if t in served.eos_ids), len(want))  # the server stops at eos
    _check_served(uri, served.tokenizer.decode(want[:cut], skip_special_tokens=True))


def _check_served(uri: str, want: str) -> None:
    """``slimray serve``'s app for llm@candidate answers the official openai client: a streamed chat."""
    import socket

    import openai
    from ray import serve

    from pipelines.scale.serve import ServeConfig, build_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = ServeConfig(model="models:/llm@candidate", port=port, cpus_per_replica=0.5, max_tokens_cap=64)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg, uri), name="test-llm", route_prefix="/")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        chunks = client.chat.completions.create(
            model="llm",
            messages=[{"role": "user", "content": "Why is the sky blue?"}],
            max_tokens=5,
            temperature=0,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == want
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            client.completions.create(model="llm", prompt="hi", max_tokens=65)
    finally:
        serve.shutdown()


@pytest.mark.slow
def test_a_folder_that_is_not_a_causal_lm_fails_the_teacher_step_in_one_line(workdir, ray_local):
    from pipelines.config.compose import load_config
    from pipelines.run import session

    for path, says in ((workdir / "nowhere", "nowhere"), (_classifier_folder(workdir), "ForCausalLM")):
        overrides = tiny_llm(path, workdir)
        cfg = load_config(overrides)
        out = session.execute(cfg, *session.validate(cfg), overrides)
        teacher = out.states["teacher"]
        assert out.exit_code == 1 and teacher.status == "failed"
        assert says in teacher.note and "\n" not in teacher.note.strip()
        assert all(out.states[s].status != "done" for s in ("data", "benchmark"))  # nothing downstream ran


def _classifier_folder(workdir):
    """A folder holding a (tiny, random) sequence classifier: not a causal LM."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tests.lm_models import tiny_tokenizer

    folder = workdir / "classifier"
    cfg = LlamaConfig(
        vocab_size=400,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=2,
        pad_token_id=0,
    )
    LlamaForSequenceClassification(cfg).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
