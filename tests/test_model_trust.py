"""No code execution from artifacts: a stored ``_target_`` resolves only to an nn.Module of the
zoo or of the allow-list the config makes (its own model targets plus ``trusted_models``)."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.config.compose import load_config
from pipelines.run import session
from tasks.core.context import StepContext
from tasks.core.types import ModelArtifact
from tasks.models.build import UntrustedModelError, build_model, complete_arch, load_model, make_artifact
from tasks.steps.load_model import LoadModelConfig, run, save_model

USER_NET = "tests.user_models.TinyNet"


def _hostile(marker) -> dict:
    """An arch.json that, imported and called blindly, would run a shell command."""
    return {"_target_": "os.system", "command": f"touch {marker}"}


def test_load_model_refuses_a_hostile_target_before_calling_it(tmp_path):
    marker = tmp_path / "pwned"
    art = ModelArtifact(name="x", kind="teacher", arch=_hostile(marker), state_dict={})
    with pytest.raises(UntrustedModelError) as info:
        load_model(art)
    msg = str(info.value)
    assert "\n" not in msg and "'os.system' is not allowed" in msg and "trusted_models" in msg
    assert not marker.exists()


def test_load_model_task_refuses_a_hostile_arch_json(tmp_path):
    """The load_model step reads arch.json from a folder someone else wrote."""
    marker = tmp_path / "pwned"
    arch = complete_arch({"_target_": "tasks.models.zoo.MLP", "hidden": [4]}, [6], 2)
    good = make_artifact(build_model(arch), arch, name="m", kind="teacher")
    folder = save_model(good, tmp_path / "model")
    (folder / "arch.json").write_text(json.dumps(_hostile(marker)))
    cfg = LoadModelConfig(arch_path=str(folder / "arch.json"), weights_path=str(folder / "model.safetensors"))
    with pytest.raises(UntrustedModelError, match="'os.system' is not allowed"):
        run(cfg=cfg, ctx=StepContext())
    assert not marker.exists()


def test_even_a_trusted_name_must_be_an_nn_module(tmp_path):
    marker = tmp_path / "pwned"
    art = ModelArtifact(name="x", kind="teacher", arch=_hostile(marker), state_dict={})
    with pytest.raises(UntrustedModelError, match="not an nn.Module subclass"):
        load_model(art, trusted=["os.system"])
    assert not marker.exists()


def test_zoo_models_load_without_a_list_and_others_need_one():
    arch = complete_arch({"_target_": USER_NET, "hidden": 4}, [6], 3)
    net = build_model(arch, trusted=[USER_NET])
    art = make_artifact(net, arch, name="user", kind="teacher")
    with pytest.raises(UntrustedModelError, match=USER_NET):
        load_model(art)
    back = load_model(art, trusted=(USER_NET,))
    x = torch.randn(5, 6)
    assert torch.equal(back(x), net.eval()(x))
    for target in ("tasks.models.build.torch", "tasks.models.build.nn.Linear", "torch.nn.Linear"):
        with pytest.raises(UntrustedModelError):
            build_model({"_target_": target, "in_features": 2, "out_features": 2})
    assert isinstance(build_model(complete_arch({"_target_": "tasks.models.zoo.CNN1D"}, [20], 3)), torch.nn.Module)


def test_a_model_named_in_the_config_is_trusted_and_trusted_models_extends_it(workdir):
    cfg = load_config(
        [
            "student_model._target_=" + USER_NET,
            "~student_model.channels",
            "~student_model.kernel_size",
            "~student_model.stride",
            "~student_model.batch_norm",
            "+student_model.hidden=4",
            "trusted_models=[tests.user_models.NeedsDepth]",
        ]
    )
    spec, _, _ = session.validate(cfg)
    assert USER_NET in spec.trusted_targets and "tests.user_models.NeedsDepth" in spec.trusted_targets
    assert "tasks.models.zoo.CNN1D" in spec.trusted_targets and "os.system" not in spec.trusted_targets
    arch = complete_arch({"_target_": USER_NET, "hidden": 4}, [6], 3)
    art = make_artifact(build_model(arch, spec.trusted_targets), arch, name="s", kind="student_kd")
    assert isinstance(load_model(art, spec.trusted_targets), torch.nn.Module)
    assert not (workdir / "mlflow.db").exists()


@pytest.mark.slow  # ~35 s on 2 cores: Ray, digits, one epoch and an ONNX export
def test_a_user_model_named_in_the_config_trains_and_exports_on_ray(workdir, ray_local):
    """The allow-list reaches the task through the engine: train builds the user's model and
    export reloads it from the stored artifact (load_model with ctx.trusted_targets)."""
    from tests.engine_helpers import run_pipeline

    model = {"_target_": USER_NET, "hidden": 8}
    pipeline = {
        "name": "own_model",
        "steps": {
            "data": {"task": "data", "params": {"source": "digits", "n_transfer": 0}},
            "train": {
                "task": "train",
                "inputs": {"data": "data"},
                "params": {"model": model, "kind": "teacher", "optim": {"epochs": 1}},
            },
            "export": {"task": "export", "inputs": {"model": "train", "data": "data"}},
        },
    }
    out = run_pipeline(workdir, pipeline=pipeline)
    assert out.exit_code == 0, {n: st.note for n, st in out.states.items()}
    exported = ray_local.get(out.states["export"].trials[0].output)
    assert exported.arch["_target_"] == USER_NET and exported.onnx is not None
