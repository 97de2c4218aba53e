"""Heads + FFN pruning of a user's Hugging Face classifier (the ``prune`` step's channel method) on
tiny BERT, DistilBERT, RoBERTa, DeBERTa-v2 and MPNet folders.

The proof that whole heads and FFN channels go, and nothing else changes: in the teacher one head of
every layer and half of every FFN are zeroed (dead); pruning half the heads and FFN channels (L2
importance) must remove exactly those, so the pruned model's logits equal the teacher's, with half
the heads, half the FFN width and the hidden width kept. The pruned model reloads strictly from its
JSON arch and exports to ONNX with the same outputs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

pytest.importorskip("transformers", reason="the nlp extra (pip install -e '.[nlp]')")

from tasks.compression.sparsity import attention_modules  # noqa: E402
from tasks.core.context import StepContext  # noqa: E402
from tasks.models.build import load_model, make_artifact  # noqa: E402
from tasks.models.hf_model import TARGET  # noqa: E402
from tasks.runtime.onnx import data_onnx, ort_predict, ort_session  # noqa: E402
from tasks.steps import hf_teacher, hf_text_data, prune  # noqa: E402
from tasks.training.loop import OptimConfig  # noqa: E402
from tests.hf_models import LABELS, SENTENCES, write_folder  # noqa: E402

# per architecture, inside one encoder layer: the attention output projection, the FFN's two linears;
# and the classification head's hidden layer (kept whole here, so the logits can stay exact)
LAYOUT = {
    "bert": ("attention.output.dense", "intermediate.dense", "output.dense", "pooler"),
    "distilbert": ("attention.out_lin", "ffn.lin1", "ffn.lin2", "pre_classifier"),
    "roberta": ("attention.output.dense", "intermediate.dense", "output.dense", "classifier"),
    "deberta-v2": ("attention.output.dense", "intermediate.dense", "output.dense", "pooler"),
    "mpnet": ("attention.attn.o", "intermediate.dense", "output.dense", "classifier"),
}

# MPNet adds one learned per-head position bias, shared by all layers, to every layer's scores:
# its heads are kept (a warning says so) and only its FFNs shrink
SHARED_HEAD_BIAS = {"mpnet"}


def _layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    stack = next(m for name, m in model.named_modules() if name.endswith(("encoder.layer", "transformer.layer")))
    return list(stack)


@torch.no_grad()
def _kill_one_head_and_half_the_ffn(model: torch.nn.Module, arch: str) -> None:
    out_name, ffn_in_name, ffn_out_name, _ = LAYOUT[arch]
    for layer in _layers(model):
        ((attn, attr, projs, _),) = attention_modules(layer)
        size = projs[0].out_features // getattr(attn, attr)
        head = slice(size, 2 * size)  # head 1
        for p in projs:  # query, key, value (and DeBERTa's relative-position projections)
            p.weight[head] = 0
            p.bias[head] = 0
        layer.get_submodule(out_name).weight[:, head] = 0
        ffn_in, ffn_out = layer.get_submodule(ffn_in_name), layer.get_submodule(ffn_out_name)
        dead = torch.arange(0, ffn_in.out_features, 2)  # every other FFN channel
        ffn_in.weight[dead] = 0
        ffn_in.bias[dead] = 0
        ffn_out.weight[:, dead] = 0


@pytest.mark.parametrize(
    "arch", [a if a in ("bert", "distilbert") else pytest.param(a, marks=pytest.mark.slow) for a in LAYOUT]
)
def test_heads_and_ffn_channels_are_pruned_whole_and_exactly(tmp_path, arch):
    folder = write_folder(tmp_path, arch)
    texts = [f"{SENTENCES[i % 4]} {'cat ' * (i % 5)}".strip() for i in range(24)]
    path = tmp_path / "t.csv"
    pd.DataFrame({"text": texts, "label": [LABELS[i % 3] for i in range(24)]}).to_csv(path, index=False)
    data = hf_text_data.run(
        cfg=hf_text_data.HfTextDataConfig(model=str(folder), path=str(path), seq_len=16, n_calib=0), ctx=StepContext()
    )
    given = hf_teacher.run(data, cfg=hf_teacher.HfTeacherConfig(path=str(folder)), ctx=StepContext())
    ctx = StepContext(trusted_targets=(TARGET,))
    net = load_model(given, ctx.trusted_targets)
    _kill_one_head_and_half_the_ffn(net, arch)
    teacher = make_artifact(net, given.arch, name="teacher", kind="teacher")
    with torch.no_grad():
        want = net(data.x_test)

    cfg = prune.PruneConfig(
        method="channel",
        amount=0.5,
        ignore=["embeddings", LAYOUT[arch][3]],  # hidden width and the head's hidden layer kept whole
        finetune=OptimConfig(epochs=0),
        throughput_batch=4,
        throughput_iters=1,
    )
    pruned = prune.run(teacher, data, cfg=cfg, ctx=ctx)
    back = load_model(pruned, ctx.trusted_targets)  # JSON arch with the pruned structure + strict weights
    heads = 2 if arch in SHARED_HEAD_BIAS else 1
    for layer in _layers(back):
        ((attn, attr, projs, _),) = attention_modules(layer)
        assert getattr(attn, attr) == heads and all(p.out_features == 16 * heads for p in projs)  # 2 heads of 16 -> 1
        assert layer.get_submodule(LAYOUT[arch][1]).out_features == 32  # FFN 64 -> 32
        assert layer.get_submodule(LAYOUT[arch][2]).out_features == 32  # hidden width kept
    assert pruned.metrics["params"] < given.metrics["params"]
    with torch.no_grad():
        got = back(data.x_test)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)  # only the dead heads and channels went
    onnx_out = ort_predict(ort_session(data_onnx(back, data), threads=1), data.x_test)
    torch.testing.assert_close(torch.from_numpy(onnx_out), got, atol=1e-5, rtol=1e-4)


def test_an_ignored_name_must_name_one_module(tmp_path):
    folder = write_folder(tmp_path, "bert")
    path = tmp_path / "t.csv"
    pd.DataFrame({"text": SENTENCES * 3, "label": [LABELS[i % 3] for i in range(12)]}).to_csv(path, index=False)
    data = hf_text_data.run(
        cfg=hf_text_data.HfTextDataConfig(model=str(folder), path=str(path), seq_len=16, n_calib=0), ctx=StepContext()
    )
    teacher = hf_teacher.run(data, cfg=hf_teacher.HfTeacherConfig(path=str(folder)), ctx=StepContext())
    ctx = StepContext(trusted_targets=(TARGET,))
    for name, why in (("dense", "modules"), ("nowhere", "no module")):
        cfg = prune.PruneConfig(method="channel", ignore=[name], finetune=OptimConfig(epochs=0))
        with pytest.raises(ValueError, match=f"prune.ignore: the model has .*{why}.*'{name}'"):
            prune.run(teacher, data, cfg=cfg, ctx=ctx)
