"""The infer task: teacher logits (+ hooked features) over train and transfer pool, in-process and
through ctx.map_batches."""

from __future__ import annotations

import pickle

import pytest
import torch

from tasks.core.context import StepContext
from tasks.core.types import Dataset
from tasks.models.build import build_model, complete_arch, load_model, make_artifact
from tasks.steps.infer import InferConfig, TeacherBatchFn, run


def _data(n_transfer=30):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 16, generator=g)
    return Dataset(
        name="tiny",
        x_train=x[:20],
        y_train=torch.arange(20) % 3,
        x_val=x[20:25],
        y_val=torch.arange(5) % 3,
        x_test=x[25:30],
        y_test=torch.arange(5) % 3,
        num_classes=3,
        x_transfer=torch.randn(n_transfer, 16, generator=g) if n_transfer else None,
    )


def _teacher():
    arch = complete_arch({"_target_": "tasks.models.zoo.CNN1D", "channels": [4, 6]}, [16], 3)
    torch.manual_seed(0)
    return make_artifact(build_model(arch), arch, name="teacher", kind="teacher")


def test_logits_match_the_model_and_split_train_transfer():
    data, teacher = _data(), _teacher()
    ctx = StepContext(step="infer")
    out = run(teacher, data, cfg=InferConfig(batch_size=7), ctx=ctx)
    model = load_model(teacher)
    with torch.no_grad():
        assert torch.allclose(out.train, model(data.x_train), atol=1e-6)
        assert torch.allclose(out.transfer, model(data.x_transfer), atol=1e-6)
    assert out.features == {} and out.teacher == "teacher"
    assert ctx.summary["rows"] == 50 and ctx.summary["parallel"] == 0.0
    none = run(teacher, _data(n_transfer=0), cfg=InferConfig(), ctx=StepContext())
    assert none.transfer is None and torch.allclose(none.train, out.train)


def test_features_are_captured_with_hooks():
    data, teacher = _data(), _teacher()
    out = run(teacher, data, cfg=InferConfig(features=["features.2", "features.5"], batch_size=16), ctx=StepContext())
    model = load_model(teacher)
    x = torch.cat([data.x_train, data.x_transfer])
    with torch.no_grad():
        first = model.features[:3](x.unsqueeze(1))
        last = model.features(x.unsqueeze(1))
        assert torch.allclose(out.train, model(data.x_train), atol=1e-6)
    assert out.features["features.2"].shape == (50, 4, 16)
    assert out.features["features.5"].shape == (50, 6, 8)
    assert torch.allclose(out.features["features.2"], first, atol=1e-6)
    assert torch.allclose(out.features["features.5"], last, atol=1e-6)


def test_parallel_path_gives_the_same_logits():
    data, teacher = _data(), _teacher()
    local = run(teacher, data, cfg=InferConfig(features=["features.5"]), ctx=StepContext())
    ctx = StepContext()
    par = run(teacher, data, cfg=InferConfig(features=["features.5"], replicas=2, batch_size=8), ctx=ctx)
    assert ctx.summary["parallel"] == 1.0
    assert torch.allclose(par.train, local.train, atol=1e-6)
    assert torch.allclose(par.transfer, local.transfer, atol=1e-6)
    assert torch.allclose(par.features["features.5"], local.features["features.5"], atol=1e-6)
    assert pickle.dumps(TeacherBatchFn(teacher, ["features.5"]))  # shipped to Ray actors


def test_unknown_feature_and_bad_batch_size():
    with pytest.raises(ValueError, match=r"features: no module named \['head.x'\] in CNN1D"):
        run(_teacher(), _data(), cfg=InferConfig(features=["head.x"]), ctx=StepContext())
    with pytest.raises(ValueError, match="batch_size: 0 is not >= 1"):
        run(_teacher(), _data(), cfg=InferConfig(batch_size=0), ctx=StepContext())
