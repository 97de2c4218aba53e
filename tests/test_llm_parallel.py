"""Model- and data-parallel greedy generation (tasks/llm/stages.py, pipelines/scale/generate.py) on the
tiny random Llama: K stages give the unsplit model's tokens in one process and on Ray actors, R
replicas answer every prompt exactly once when an actor is SIGKILLed mid-run, and on a local 3-node
cluster the stages run on different nodes with the same tokens.

The reference is ``TorchDecoder.generate`` (Hugging Face ``generate``, greedy) on each prompt alone.
The model is a 5-layer tiny Llama with a wider weight init (varied tokens, not one repeated) and eos
= 70, a token some prompts produce early, so the stop-and-pad rule is exercised too.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from lm_models import tiny_llama

from tasks.llm.decoder import TorchDecoder
from tasks.llm.stages import Stage, generate_local, load_model, make_stages, plan, split_stages

EOS, NEW = 70, 12
LENGTHS = [7, 7, 7, 5, 7, 5, 9, 7]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, model, prompts, reference tokens per prompt)."""
    folder = tiny_llama(tmp_path_factory.mktemp("lm") / "tiny", layers=5, initializer_range=0.2)
    model = load_model(str(folder))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 390, size=n).tolist() for n in LENGTHS]
    decoder = TorchDecoder(model)
    reference = [decoder.generate(np.array([p]), NEW, EOS)[0].tolist() for p in prompts]
    return folder, model, prompts, reference


def test_stages_in_one_process_give_the_unsplit_tokens(tiny):
    _, model, prompts, reference = tiny
    assert any(EOS in r[:-1] and r[-1] == EOS for r in reference)  # an early stop, padded
    assert split_stages(model, 2) == [(0, 3), (3, 5)]  # the tied head weighs on the last stage
    for stages, micro in ((1, 3), (2, 1), (3, 3), (5, 2)):
        assert generate_local(make_stages(model, stages), prompts, NEW, EOS, micro) == reference


def test_a_stage_keeps_its_cache_per_micro_batch_and_refuses_bad_input(tiny):
    import torch

    _, model, prompts, _ = tiny
    first, last = make_stages(model, 2)
    ids = torch.tensor([prompts[0], prompts[1]])
    hidden = first.forward([4, 5], ids, torch.arange(7))
    assert hidden.shape == (2, 7, 64) and last.forward([4, 5], hidden, torch.arange(7)).shape == (
        2,
        model.config.vocab_size,
    )
    assert first.cached() == 2 and last.cached() == 2
    with pytest.raises(ValueError, match="seq_ids: 5 already holds a cache"):
        first.forward([5, 6], ids, torch.arange(7))
    with pytest.raises(ValueError, match="positions: start at 3"):
        first.forward([4, 5], ids[:, :1], torch.arange(3, 4))
    first.free([4, 5])
    assert first.cached() == 0
    with pytest.raises(ValueError, match="stages: 6 is not between 1"):
        Stage(model, 0, 6)
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        plan([[1, 2], []], 1)
    with pytest.raises(ValueError, match="model files: model.safetensors is missing"):
        load_model({"config.json": b"{}"})
    assert plan([[1], [2, 3], [4], [5], [6, 7]], 2) == [[0, 2, 3], [1, 4]]


@pytest.mark.slow
def test_pipelines_of_2_and_3_stage_actors_give_the_unsplit_tokens(ray_local, tiny):
    from pipelines.scale.generate import GenerationPool, pipeline_generate

    folder, _, prompts, reference = tiny
    pool = GenerationPool(str(folder), stages=2, num_cpus=0.5)
    try:
        out, summary = pool.generate(prompts, NEW, EOS, micro_batches=3)
        layers = [p["layers"] for p in pool.placement()[0]]
    finally:
        pool.shutdown()
    assert out == reference and layers == [[0, 3], [3, 5]]
    assert summary["rows_lost"] == summary["rows_duplicated"] == summary["restarts"] == 0
    assert summary["peak_in_flight"] == 3  # the micro-batches overlap in the pipeline
    assert pipeline_generate(str(folder), prompts, stages=3, max_new_tokens=NEW, eos_id=EOS, num_cpus=0.5) == reference


@pytest.mark.slow
def test_a_prompt_file_is_answered_in_order_by_two_pipelines_of_two_stages(ray_local, tiny, tmp_path):
    """R x K = 2 x 2 from a JSON-lines file; the answers are the unsplit model's, one line per prompt."""
    import json

    from pipelines.scale.generate import generate_file
    from tasks.llm.model import load_tokenizer

    folder, model, _, _ = tiny
    texts = ["The cat sat on", "Rivers flow from the mountains", "A list holds items", "The dog ran"]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n\n" for t in texts))
    out = tmp_path / "answers.jsonl"
    summary = generate_file(
        str(folder), tmp_path / "prompts.jsonl", out, stages=2, replicas=2, max_new_tokens=6, num_cpus=0.5
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    tokenizer, decoder = load_tokenizer(str(folder)), TorchDecoder(model)
    eos = tokenizer.eos_token_id
    for i, (row, text) in enumerate(zip(rows, texts, strict=True)):
        want = decoder.generate(np.array([tokenizer(text)["input_ids"]]), 6, eos)[0].tolist()
        want = want[: want.index(eos)] if eos in want else want
        assert row == {
            "index": i,
            "prompt": text,
            "completion": tokenizer.decode(want, skip_special_tokens=True),
            "tokens": want,
        }
    assert summary["rows_lost"] == summary["rows_duplicated"] == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected"):
        generate_file(str(folder), bad, tmp_path / "never.jsonl")
    assert not (tmp_path / "never.jsonl").exists()


@pytest.mark.slow
def test_a_killed_replica_actor_loses_no_prompt_and_duplicates_none(ray_local, tiny):
    from pipelines.scale.generate import GenerationPool

    folder, model, prompts, _ = tiny
    many = [p for _ in range(4) for p in prompts]  # 32 prompts, 16 micro-batches of 2 rows, 40 tokens each
    decoder = TorchDecoder(model)
    reference = [decoder.generate(np.array([p]), 40, EOS)[0].tolist() for p in prompts] * 4
    pool = GenerationPool(str(folder), replicas=2, num_cpus=0.5)
    try:
        victim = pool.pids()[1][0]
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(out=pool.generate(many, 40, EOS, micro_batches=16)))
        runner.start()
        deadline = time.monotonic() + 60
        while pool.steps_done < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)
        runner.join(timeout=120)
        assert not runner.is_alive()
        assert victim not in [p for chain in pool.pids() for p in chain]  # the replica was replaced
    finally:
        pool.shutdown()
    out, summary = result["out"]
    assert out == reference  # every prompt answered, with the unsplit model's tokens
    assert summary["rows_lost"] == 0 and summary["rows_duplicated"] == 0
    assert summary["restarts"] == 1 and summary["resubmitted"] >= 1


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_stages_on_different_nodes_of_a_local_cluster_give_the_unsplit_tokens(tiny):
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.scale.generate import GenerationPool

    folder, _, prompts, reference = tiny
    node = dict(num_cpus=1, memory=2 * 1024**3, object_store_memory=200 * 1024**2)
    if ray.is_initialized():  # the session's embedded Ray (ray_local re-inits it when needed)
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args=node)
    try:
        nodes = [cluster.add_node(**node, resources={f"stage{k}": 1}) for k in range(2)]
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, logging_level="WARNING")
        options = [{"resources": {f"stage{k}": 1}} for k in range(2)]
        pool = GenerationPool(str(folder), stages=2, num_cpus=0.5, stage_options=options)
        try:
            where = [p["node"] for p in pool.placement()[0]]
            out, _ = pool.generate(prompts, NEW, EOS)
        finally:
            pool.shutdown()
        assert where == [n.node_id for n in nodes]  # stage k on worker node k
        assert out == reference
    finally:
        ray.shutdown()
        cluster.shutdown()
