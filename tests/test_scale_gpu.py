"""GPU paths of batch inference on Ray Data: one model copy per GPU actor, fractional GPUs
(2 replicas on 1 GPU), pipeline stages each an actor pool on the GPU with its own CUDA stream, the
ORT CUDA execution provider. Skipped without CUDA.

On a GPU machine: ``.venv/bin/python -m pytest tests/test_scale_gpu.py -q -rA`` (it prints where
each actor ran)."""

from __future__ import annotations

import functools

import pytest
import torch

from pipelines.scale import batch
from tasks.models.build import build_model, complete_arch, load_model, make_artifact
from tasks.steps.inference import Predictor, plan_stages

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _art():
    arch = complete_arch({"_target_": "tasks.models.zoo.MLP", "hidden": [512] * 6}, [40], 10)
    torch.manual_seed(0)
    return make_artifact(build_model(arch), arch, name="mlp", kind="teacher")


def test_two_replicas_share_one_gpu_with_fractional_num_gpus(ray_local):
    art, x = _art(), torch.randn(4096, 40)
    factory = functools.partial(Predictor, art, "torch", "auto", 1)
    r = batch.run([factory], x, batch_size=256, replicas=2, num_cpus=0.5, num_gpus=0.5)
    print("replica placement:", r.placement)
    assert len(r.placement) == 2  # one model copy per actor, each on the GPU Ray gave it
    assert all(w["device"] == "cuda" and w["gpu_ids"] for w in r.placement)
    with torch.no_grad():
        ref = load_model(art)(x)
    assert torch.allclose(torch.from_numpy(r.out), ref, atol=1e-3) and r.summary["restarts"] == 0


def test_pipeline_stages_each_on_a_gpu_with_their_own_stream(ray_local):
    art, x = _art(), torch.randn(2048, 40)
    spans = plan_stages(load_model(art), 2, x[:128])
    stages = [functools.partial(Predictor, art, "torch", "cuda", 1, s) for s in spans]
    r = batch.run(stages, x, batch_size=128, replicas=1, num_cpus=0.5, num_gpus=0.5)
    print("stage placement:", r.placement)
    assert [(w["stage"], w["device"]) for w in r.placement] == [(0, "cuda"), (1, "cuda")]
    out = r.out
    p = Predictor(art, "torch", "cuda", 1, spans[0])
    assert p.stream is not None and p.stream != torch.cuda.current_stream()
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), load_model(art)(x), atol=1e-3)


def test_ort_replica_uses_the_cuda_execution_provider():
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA provider (install onnxruntime-gpu)")
    art = _art()
    p = Predictor(art, "onnxruntime", "cuda", 1)
    assert p.session.get_providers()[0] == "CUDAExecutionProvider"
    x = torch.randn(64, 40)
    with torch.no_grad():
        assert torch.allclose(p(x), load_model(art)(x), atol=1e-3)
