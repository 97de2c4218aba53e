"""Head and FFN pruning of a small random-initialised sentence encoder, fine-tuned on its own vectors."""

import pytest
import torch

from tasks.core.context import StepContext
from tasks.models.build import load_model, make_artifact
from tasks.runtime.onnx import data_onnx, ort_predict, ort_session
from tasks.steps import prune_embedding
from tasks.training.loop import OptimConfig
from tests.text_models import TRUSTED, text_dataset, tiny_encoder

pytest.importorskip("transformers", reason="the nlp extra (pip install -e '.[nlp]')")


def test_heads_and_ffn_pruned_reload_strictly_export_and_keep_the_embedding_width():
    data = text_dataset(n_train=32)
    net, arch = tiny_encoder()
    art = make_artifact(net, arch, name="teacher", kind="teacher")
    cfg = prune_embedding.PruneEmbeddingConfig(amount=0.5, finetune=OptimConfig(epochs=1, batch_size=16, lr=1e-3))
    ctx = StepContext(trusted_targets=TRUSTED)
    pruned = prune_embedding.run(art, data, cfg=cfg, ctx=ctx)
    back = load_model(pruned, TRUSTED)  # arch (+ pruned structure as JSON) + strict weights
    for layer in back.encoder.encoder.layer:
        assert layer.attention.self.num_attention_heads == 2  # 4 heads -> 2
        assert layer.intermediate.dense.out_features == 32  # FFN 64 -> 32
    assert pruned.metrics["params"] < sum(p.numel() for p in net.parameters())
    x = data.x_test
    with torch.no_grad():
        out = back(x)
    assert out.shape == (len(x), 32)  # the embedding width stays
    sess = ort_session(data_onnx(back, data), threads=1)
    torch.testing.assert_close(torch.from_numpy(ort_predict(sess, x)), out, atol=1e-5, rtol=1e-4)
    assert -1.0 <= pruned.metrics["cos_mean"] <= 1.0 and "cos_mean_pruned" in pruned.metrics


def test_prune_embedding_refuses_classification_data():
    from tasks.core.types import Dataset

    z = torch.zeros(4, 3)
    data = Dataset(
        "d",
        z,
        torch.zeros(4, dtype=torch.long),
        z,
        torch.zeros(4, dtype=torch.long),
        z,
        torch.zeros(4, dtype=torch.long),
        2,
    )
    net, arch = tiny_encoder()
    with pytest.raises(ValueError, match="needs embedding data"):
        prune_embedding.run(
            make_artifact(net, arch, name="t", kind="teacher"),
            data,
            cfg=prune_embedding.PruneEmbeddingConfig(),
            ctx=StepContext(),
        )
