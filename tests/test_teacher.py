"""The load_model task: arch JSON + safetensors round trip and clear errors for bad files."""

from __future__ import annotations

import json

import pytest
import torch

from tasks.core.context import StepContext
from tasks.models.build import build_model, complete_arch, load_model, make_artifact
from tasks.steps.load_model import LoadModelConfig, run, save_model


def _artifact(channels=(4, 4)):
    arch = complete_arch({"_target_": "tasks.models.zoo.CNN1D", "channels": list(channels)}, [20], 3)
    torch.manual_seed(0)
    model = build_model(arch)
    with torch.no_grad():  # non-trivial BN statistics must survive the round trip too
        model(torch.randn(16, 20))
    return make_artifact(model.train(), arch, name="trained", kind="teacher")


def _load(directory, **kw):
    cfg = LoadModelConfig(
        arch_path=str(directory / "arch.json"), weights_path=str(directory / "model.safetensors"), **kw
    )
    ctx = StepContext(step="teacher")
    return run(cfg=cfg, ctx=ctx), ctx


def test_round_trip_gives_the_same_model(tmp_path):
    art = _artifact()
    save_model(art, tmp_path / "export")
    loaded, ctx = _load(tmp_path / "export", kind="student_scratch")
    assert loaded.name == "teacher" and loaded.kind == "student_scratch" and loaded.arch == art.arch
    assert loaded.state_dict.keys() == art.state_dict.keys()
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in art.state_dict.items())
    x = torch.randn(5, 20)
    assert torch.equal(load_model(loaded)(x), load_model(art)(x))
    assert ctx.summary["params"] == loaded.metrics["params"] > 0


def test_missing_files(tmp_path):
    save_model(_artifact(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="weights_path: file .*model.safetensors' does not exist"):
        _load(tmp_path)
    with pytest.raises(ValueError, match="arch_path: file .*nowhere.json' does not exist"):
        run(cfg=LoadModelConfig(arch_path=str(tmp_path / "nowhere.json")), ctx=StepContext())


def test_shape_mismatch_names_the_tensor(tmp_path):
    save_model(_artifact(channels=(4, 4)), tmp_path)
    arch = json.loads((tmp_path / "arch.json").read_text())
    arch["channels"] = [4, 6]
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    expected = r"'features.3.weight' has shape \[4, 4, 5\], the architecture expects \[6, 4, 5\]"
    with pytest.raises(ValueError, match=expected):
        _load(tmp_path)
    arch["channels"] = [4, 4, 4]
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    with pytest.raises(ValueError, match="weights do not match the architecture: missing"):
        _load(tmp_path)


def test_bad_arch_and_weights_files(tmp_path):
    save_model(_artifact(), tmp_path)
    (tmp_path / "arch.json").write_text("{not json")
    with pytest.raises(ValueError, match="arch.json: not valid JSON"):
        _load(tmp_path)
    (tmp_path / "arch.json").write_text(json.dumps({"channels": [4]}))
    with pytest.raises(ValueError, match="'_target_'"):
        _load(tmp_path)
    save_model(_artifact(), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        _load(tmp_path)
