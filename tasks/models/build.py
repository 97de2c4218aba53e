"""The model <-> artifact round trip (architecture config + safetensors weights).

Architectures take their per-layer widths as explicit lists, so a structurally pruned model
is described by the same constructor with smaller widths and reloads without pickle.
Any other ``nn.Module`` can be used through ``_target_`` (its kwargs must be JSON values), unchanged:
``data_args`` maps the data's class count and input shape to its own constructor argument names.
A channel-pruned model of any class is its original arch config plus the pruned structure
(``_pruned_``: changed module attributes and tensor shapes, JSON), so it reloads without pickle.

A stored ``arch`` is data from elsewhere (another run, a shared folder), so its ``_target_`` is
never imported blindly: it must be a model of this zoo or one of the ``trusted`` targets the
engine passes (the targets named in the current config plus its ``trusted_models`` list).
Anything else is refused *before* its module is imported, so a hostile ``arch.json`` naming
``os.system`` runs nothing.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tasks.core.types import ModelArtifact
from tasks.models import zoo

DATA_KWARGS = ("input_shape", "num_classes")  # filled by these names when a model has no data_args
DATA_ARGS = "data_args"  # model config key: {constructor argument: data value}
PRUNED = "_pruned_"  # arch key: the pruned structure (module attributes + tensor shapes), JSON
SAMPLE = "_sample_shape_"  # arch key: one input sample's shape, for a model whose constructor does not take it
DATA_VALUE_RE = re.compile(r"^(?:num_classes|input_shape(?:\[(-?\d+)\])?)$")
DATA_VALUES = "num_classes | input_shape | input_shape[i]"


class UntrustedModelError(ValueError):
    """A ``_target_`` outside the model allow-list (nothing was imported or called)."""


def _zoo_class(target: str) -> type | None:
    """The model class ``tasks.models.zoo.<Name>`` names, else None (no import happens)."""
    module, _, name = target.rpartition(".")
    value = getattr(zoo, name, None) if module == zoo.__name__ else None
    return value if isinstance(value, type) and issubclass(value, nn.Module) else None


def resolve_model(target: str, trusted: Iterable[str] = ()) -> type[nn.Module]:
    """The ``nn.Module`` class of ``target`` if it is allowed: a zoo model or in ``trusted``.

    The allow-list check runs before any import, so an untrusted target executes no code.
    """
    target = str(target)
    zoo = _zoo_class(target)
    if zoo is not None:
        return zoo
    if target not in set(trusted):
        raise UntrustedModelError(
            f"model _target_ '{target}' is not allowed: only the model zoo (tasks.models.build.*) and models "
            f"named in the config load; to trust it add it to the config: trusted_models: ['{target}']"
        )
    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError) as e:
        raise ValueError(f"model _target_ '{target}' cannot be imported: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UntrustedModelError(f"model _target_ '{target}' is not an nn.Module subclass")
    return cls


def build_model(arch: dict, trusted: Iterable[str] = ()) -> nn.Module:
    """Instantiate ``arch = {"_target_": "pkg.Class", **kwargs}`` (zoo or ``trusted`` targets only).

    An arch with a pruned structure (``_pruned_``) is built by the constructor, then reshaped to
    the stored module attributes and tensor shapes (``apply_structure``): the skeleton that the
    pruned weights load into strictly.
    """
    if "_target_" not in arch:
        raise ValueError(f"model config has no _target_: {sorted(arch)}")
    if DATA_ARGS in arch:
        raise ValueError(f"model '{arch['_target_']}': data_args are not filled in (tasks.models.build.complete_arch)")
    kwargs = {k: v for k, v in arch.items() if k not in ("_target_", PRUNED, SAMPLE)}
    model = resolve_model(arch["_target_"], trusted)(**kwargs)
    if arch.get(PRUNED):
        apply_structure(model, arch[PRUNED])
    return model


def data_value(source: str, input_shape: Sequence[int], num_classes: int, where: str = "data_args"):
    """The data's value that ``source`` names: ``num_classes``, ``input_shape`` or ``input_shape[i]``."""
    m = DATA_VALUE_RE.match(str(source))
    if not m:
        raise ValueError(f"{where}: unknown data value '{source}' ({DATA_VALUES})")
    if source == "num_classes":
        return int(num_classes)
    if m.group(1) is None:
        return [int(d) for d in input_shape]
    i = int(m.group(1))
    if not -len(input_shape) <= i < len(input_shape):
        raise ValueError(f"{where}: '{source}' is out of range for input_shape {list(input_shape)}")
    return int(input_shape[i])


def complete_arch(arch: dict, input_shape: list[int], num_classes: int) -> dict:
    """Fill the data-dependent constructor arguments into an arch config.

    Without ``data_args`` the constructor gets ``input_shape`` and ``num_classes`` by those names
    (the zoo's convention); with ``data_args: {n_classes: num_classes, length: input_shape[-1]}``
    exactly the mapped arguments get the named data values, under the user's own names. The result
    holds plain constructor kwargs only, so it is stored as-is and rebuilds without the data.
    """
    out = copy.deepcopy(dict(arch))
    mapping = out.pop(DATA_ARGS, None)
    if mapping is None:
        out.setdefault("input_shape", list(input_shape))
        out.setdefault("num_classes", int(num_classes))
        return out
    for arg, source in dict(mapping).items():
        out[str(arg)] = data_value(str(source), input_shape, num_classes, f"model.data_args.{arg}")
    out[SAMPLE] = list(input_shape)
    return out


def sample_shape(arch: dict) -> list[int]:
    """The shape of one input sample of ``arch``'s model (to export or serve it without data)."""
    shape = arch.get(SAMPLE, arch.get("input_shape"))
    if shape is None:
        raise ValueError(f"model '{arch.get('_target_')}': its arch records no input shape")
    return [int(d) for d in shape]


def _json_attr(value):
    """``value`` as JSON if it is a plain structural attribute (number, string, list of them), else None."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    return None


def structure_of(model: nn.Module, base: nn.Module) -> dict:
    """How ``model`` (pruned) differs from ``base`` (the same arch, unpruned), as JSON.

    ``attributes``: per module, the plain attributes that changed (``out_channels``, ``groups``,
    ``normalized_shape``, an attention's ``num_attention_heads``, ...); ``shapes``: every
    parameter and buffer whose shape changed. Together with the arch config this rebuilds the
    pruned skeleton (Torch-Pruning's ``tp.state_dict`` keeps the same "attributions", but pickled).
    """
    bases = dict(base.named_modules())
    attributes: dict[str, dict] = {}
    for name, mod in model.named_modules():
        ref = bases.get(name)
        if ref is None:
            raise ValueError(f"pruned model has a module '{name}' its architecture does not build")
        changed = {
            k: _json_attr(v)
            for k, v in vars(mod).items()
            if not k.startswith("_")
            and k != "training"
            and _json_attr(v) is not None
            and _json_attr(getattr(ref, k, None)) != _json_attr(v)
        }
        if changed:
            attributes[name] = changed
    want = base.state_dict()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items() if k not in want or v.shape != want[k].shape}
    return {"attributes": attributes, "shapes": shapes}


def apply_structure(model: nn.Module, structure: dict) -> nn.Module:
    """Reshape a freshly built ``model`` in place to a stored pruned ``structure`` (weights uninitialised)."""
    for name, attrs in structure.get("attributes", {}).items():
        mod = model.get_submodule(name)
        for k, v in attrs.items():
            setattr(mod, k, tuple(v) if isinstance(getattr(mod, k, None), tuple) else v)
    for key, shape in structure.get("shapes", {}).items():
        path, _, leaf = key.rpartition(".")
        mod = model.get_submodule(path)
        param, buffer = mod._parameters.get(leaf), mod._buffers.get(leaf)
        if param is not None:
            mod._parameters[leaf] = nn.Parameter(torch.empty(shape, dtype=param.dtype), param.requires_grad)
        elif buffer is not None:
            mod._buffers[leaf] = torch.empty(shape, dtype=buffer.dtype)
        else:
            raise ValueError(f"pruned structure names '{key}', which the architecture does not have")
    return model


def load_model(art: ModelArtifact, trusted: Iterable[str] = ()) -> nn.Module:
    """Rebuild a model from its artifact (config + weights, strict), in eval mode.

    ``art.arch["_target_"]`` must be a zoo model or in ``trusted`` (pass ``ctx.trusted_targets``).
    """
    model = build_model(art.arch, trusted)
    model.load_state_dict(art.state_dict, strict=True)
    return model.eval()


def make_artifact(
    model: nn.Module,
    arch: dict,
    *,
    name: str,
    kind: str,
    parent: str | None = None,
    metrics: dict | None = None,
    onnx: bytes | None = None,
) -> ModelArtifact:
    """Snapshot a model (CPU, contiguous, detached weights) into an artifact."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return ModelArtifact(
        name=name,
        kind=str(kind),
        arch=copy.deepcopy(dict(arch)),
        state_dict=state,
        parent=parent,
        metrics=dict(metrics or {}),
        onnx=onnx,
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def flops_one_sample(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass on one sample (``FlopCounterMode`` counts a multiply-add as 2).

    The project's one FLOP counter: ``prune`` reports its ``flops`` with it too.
    """
    counter = FlopCounterMode(display=False)
    # parameters that require grad fail FlopCounterMode's module tracker when a model feeds one to a
    # submodule as an input (DeBERTa-v2's relative embeddings): counted frozen, restored after
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with counter, torch.no_grad():
            model.cpu().eval()(x[:1].cpu())
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return int(counter.get_total_flops())
