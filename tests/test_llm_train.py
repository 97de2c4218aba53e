"""Distillation of a causal LM as a checkpointed, data-parallel loop: in this process and on Ray Train
(DDP over 2 workers), resumed from the last checkpoint after a worker is SIGKILLed, on one node and
on a 2-node local cluster. The tiny random Llama of tests/lm_models.py, 2 of its 4 layers kept."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tasks.core.context import StepContext
from tasks.core.train_session import LocalSession, load_checkpoint, run_local
from tasks.core.types import Logits
from tasks.llm.depth import drop_layers
from tasks.llm.distill import distill, topk_logits
from tasks.llm.distill_loop import distill_loop, loop_config
from tasks.llm.model import config_dict, lm_state
from tasks.llm.types import CausalLM, TokenSet
from tests.lm_models import tiny_llama

ROWS, SEQ, BATCH, EPOCHS = 8, 16, 4, 3  # 6 steps of 4 rows (2 per worker with 2 workers)
OPTIONS = dict(epochs=EPOCHS, batch=BATCH, lr=3e-3, seed=0)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """(student config, student state, ids, top-k values, top-k indices, teacher)."""
    folder = tiny_llama(tmp_path_factory.mktemp("tiny"), layers=4)
    teacher = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(0, 300, (ROWS, SEQ), generator=torch.Generator().manual_seed(3))
    values, indices = topk_logits(teacher, ids, k=16)
    student = drop_layers(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), [0, 3])
    return config_dict(student), lm_state(student), ids, values, indices, teacher


def _config(parts, **options):
    return loop_config(*parts[:5], **{**OPTIONS, **options})


def _losses(history):
    return [row["loss"] for row in history]


def _steps(history):
    return [int(row["step"]) for row in history]


def test_loop_in_process_matches_distill_and_returns_the_final_state(parts):
    from tasks.llm.model import build_causal_lm, load_lm_state

    state, history = run_local(distill_loop, _config(parts, checkpoint_every=4))
    reference = load_lm_state(build_causal_lm(parts[0]), parts[1])
    expected = distill(reference, *parts[2:5], epochs=EPOCHS, batch=BATCH, lr=3e-3, seed=0)
    assert _steps(history) == list(range(1, 7)) and state["step"] == 6
    assert _losses(history) == pytest.approx(_losses(expected), rel=1e-5)
    assert [r["tokens"] for r in history] == [r["tokens"] for r in expected]
    final = lm_state(reference)
    assert all(torch.allclose(state["model"][k], final[k], atol=1e-6) for k in final)


class _Crash(LocalSession):
    """A process that dies after its ``at``-th report (after the checkpoint of that step is written)."""

    def __init__(self, folder, at):
        super().__init__(folder)
        self.at = at

    def report(self, metrics, state=None):
        super().report(metrics, state)
        if len(self.history) == self.at:
            raise KeyboardInterrupt("killed")


def test_local_checkpoints_resume_without_gap_or_duplicate(parts, tmp_path):
    config = _config(parts, checkpoint_every=2)
    _, reference = run_local(distill_loop, config)
    with pytest.raises(KeyboardInterrupt):
        distill_loop(_Crash(tmp_path / "ckpt", at=5), config)  # checkpoints at steps 2 and 4, dies at 5
    assert _steps(load_checkpoint(tmp_path / "ckpt")[1]) == [1, 2, 3, 4]
    state, history = run_local(distill_loop, config, folder=tmp_path / "ckpt")
    assert _steps(history) == list(range(1, 7)) and state["step"] == 6
    assert _losses(history) == pytest.approx(_losses(reference), rel=1e-5)


def test_a_checkpoint_is_safetensors_and_json_and_restores_an_optimizer(tmp_path):
    import torch

    from tasks.core.train_session import save_checkpoint

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    tied = torch.arange(4.0)
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "step": 7, "pair": (tied, tied[:2]), "x": None}
    save_checkpoint(tmp_path, state, [{"loss": 1.0}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "state.json", "state.safetensors"]
    back, history = load_checkpoint(tmp_path)
    assert history == [{"loss": 1.0}] and back["step"] == 7 and back["x"] is None
    assert list(back["optimizer"]["state"]) == [0, 1]  # integer parameter ids stay integers
    assert torch.equal(back["pair"][1], tied[:2]) and torch.equal(back["model"]["weight"], net.weight)
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    fresh.load_state_dict(back["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(ValueError, match="^state: /step is a set"):
        save_checkpoint(tmp_path, {"step": {1}}, [])


def test_bad_input_is_refused_in_one_line(parts, tmp_path):
    from pipelines.scale.train import train_workers

    with pytest.raises(ValueError, match="^lrr: not an option"):
        _config(parts, lrr=1.0)
    with pytest.raises(ValueError, match="^values: shape"):
        loop_config(*parts[:3], parts[3][:, :4], parts[4])
    with pytest.raises(ValueError, match="state.safetensors is missing"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="^workers: must be >= 1"):
        train_workers(distill_loop, {}, workers=0)
    with pytest.raises(ValueError, match="^storage: must be an absolute path"):
        train_workers(distill_loop, {}, workers=1, storage="relative/dir")


class _Engine:
    """The engine's side of ``ctx`` that this step uses: metrics dropped, training on Ray Train."""

    def log_metrics(self, metrics, step=None):
        pass

    def train_workers(self, loop_fn, config, **options):
        from pipelines.scale.train import train_workers

        return train_workers(loop_fn, config, name="lm_distill", **options)


def _step_inputs(parts):
    config, state, ids, values, indices, _ = parts
    docs = torch.randint(0, 300, (3 * 20,), generator=torch.Generator().manual_seed(4))
    data = TokenSet(
        name="text",
        eval_ids=docs,
        eval_offsets=torch.tensor([0, 20, 40, 60]),
        calib=ids[:2],
        distill=ids,
        prompt_ids=docs[:5],
        prompt_offsets=torch.tensor([0, 5]),
    )
    student = CausalLM(name="depth", config=config, state_dict=state)
    return student, Logits(train=values, features={"indices": indices}), data


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_step_on_two_ray_train_workers_follows_the_in_process_curve(parts, ray_local):
    from tasks.steps.lm_distill import LmDistillConfig, run

    inputs = _step_inputs(parts)
    settings = dict(epochs=EPOCHS, batch_size=BATCH, lr=3e-3, eval_every=3, window=16)
    here = StepContext(step="healed")
    alone = run(*inputs, cfg=LmDistillConfig(**settings), ctx=here)
    ddp = StepContext(step="healed", tracker=_Engine())
    spread = run(*inputs, cfg=LmDistillConfig(**settings, workers=2, checkpoint_every=2), ctx=ddp)

    def kd(ctx):
        return [m["kd_loss"] for _, m in ctx.history if "kd_loss" in m]

    assert len(kd(here)) == 6 and kd(ddp) == pytest.approx(kd(here), rel=1e-3)
    assert kd(here)[-1] < kd(here)[0]
    curve, ddp_curve = alone.metrics["learning_curve"], spread.metrics["learning_curve"]
    assert [p["step"] for p in curve] == [p["step"] for p in ddp_curve] == [0, 3, 6]
    assert [p["ppl"] for p in ddp_curve] == pytest.approx([p["ppl"] for p in curve], rel=1e-3)
    assert spread.metrics["distill_tokens"] == alone.metrics["distill_tokens"] == 6 * BATCH * SEQ
    for key, value in alone.state_dict.items():
        assert torch.allclose(spread.state_dict[key], value, atol=1e-4), key


class _Slow:
    """A session that waits after each report, so a worker can be killed mid-run, and writes the step
    it resumed from into ``mark``."""

    def __init__(self, session, delay, mark):
        self._session, self._delay, self._mark = session, delay, mark

    def __getattr__(self, name):
        return getattr(self._session, name)

    def restore(self):
        state = self._session.restore()
        self._mark.write_text(str(state["step"] if state else 0))
        return state

    def report(self, metrics, state=None):
        self._session.report(metrics, state)
        time.sleep(self._delay)


def slow_loop(session, config):
    """``distill_loop``, leaving a mark ``<rank>-<pid>-<node>`` per worker start in ``config["marks"]``."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    mark = Path(config["marks"], f"{session.rank}-{os.getpid()}-{node}")
    mark.touch()
    distill_loop(_Slow(session, config["delay"], mark), config)


def _kill_after_checkpoint(storage: Path, marks: Path, step: int, node: str | None, killed: list) -> None:
    """SIGKILL a worker (rank 1, or the one on ``node``) once the checkpoint of ``step`` is registered
    (named in the run's checkpoint-manager snapshot, not merely copied to storage)."""
    deadline, name = time.monotonic() + 90, f"checkpoint_{step:08d}"
    while time.monotonic() < deadline:
        snapshots = list(storage.glob("*/checkpoint_manager_snapshot.json"))
        if snapshots and name in snapshots[0].read_text() and len(list(marks.iterdir())) >= 2:
            names = [p.name.split("-") for p in marks.iterdir()]
            rank, pid, where = next(n for n in names if (n[2] == node if node else n[0] == "1"))
            os.kill(int(pid), signal.SIGKILL)
            killed.append((int(rank), int(pid), where))
            return
        time.sleep(0.05)


def _killed_run(parts, tmp_path, node=None):
    """(history, marks, killed) of a 2-worker run with a worker SIGKILLed after the step-4 checkpoint."""
    import ray.cloudpickle

    from pipelines.scale.train import train_workers

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
    storage, marks = tmp_path / "storage", tmp_path / "marks"
    storage.mkdir()
    marks.mkdir()
    epochs = 4  # 8 steps
    config = {**_config(parts, epochs=epochs, checkpoint_every=2), "marks": str(marks), "delay": 0.2}
    killed: list = []
    killer = threading.Thread(target=_kill_after_checkpoint, args=(storage, marks, 4, node, killed), daemon=True)
    killer.start()
    state, history = train_workers(slow_loop, config, workers=2, max_failures=2, storage=str(storage))
    killer.join(timeout=5)
    _, reference = run_local(distill_loop, _config(parts, epochs=epochs))
    assert killed, "no worker was killed"
    resumed_from = sorted(int(p.read_text()) for p in marks.iterdir())
    assert len(resumed_from) == 4 and resumed_from[:2] == [0, 0]  # the worker group started twice,
    assert resumed_from[2] == resumed_from[3] >= 4  # then from the checkpoint stored before the kill
    assert _steps(history) == list(range(1, 9)) and state["step"] == 8
    assert _losses(history) == pytest.approx(_losses(reference), rel=1e-3)
    return killed


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkilled_worker_resumes_from_the_last_checkpoint(parts, tmp_path, ray_local):
    killed = _killed_run(parts, tmp_path)
    assert killed[0][0] == 1


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkilled_worker_on_the_second_node_resumes(parts, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    node_args = dict(num_cpus=1, memory=2 * 1024**3, object_store_memory=200 * 1024**2)
    cluster = Cluster(initialize_head=True, head_node_args=node_args)
    try:
        second = cluster.add_node(**node_args)
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, logging_level="WARNING")
        killed = _killed_run(parts, tmp_path, node=second.node_id)
        assert killed[0][2] == second.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()
