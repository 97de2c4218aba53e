"""Quality per task kind: metric values on hand-made vectors, the losses, bad kinds."""

import math

import pytest
import torch

from tasks.core.options import TaskKind
from tasks.evaluation.quality import embedding_quality, primary_metric, quality
from tasks.training.losses import embedding_loss, loss_for


def test_primary_metric_per_kind_and_a_bad_kind_named():
    assert primary_metric("classification") == "val_acc"
    assert primary_metric(TaskKind.embedding) == "cos_mean"
    with pytest.raises(ValueError, match="'regression'"):
        primary_metric("regression")


def test_identical_embeddings_agree_fully():
    e = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    q = embedding_quality(e * 3.0, e)  # scale does not change cosine or neighbours
    assert q["cos_mean"] == pytest.approx(1.0, abs=1e-6) and q["cos_min"] == pytest.approx(1.0, abs=1e-6)
    assert q["top1_agree"] == 1.0 and q["top5_agree"] == 1.0


def test_cosine_and_retrieval_on_known_vectors():
    ref = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    cand = ref.clone()
    cand[3] = torch.tensor([1.0, -1.0])  # row 3 now points elsewhere: cos 0.1/0.906*... < 0
    q = embedding_quality(cand, ref)
    cos3 = float(torch.nn.functional.cosine_similarity(cand[3:], ref[3:])[0])
    assert q["cos_min"] == pytest.approx(cos3) and cos3 < 0.0
    assert q["cos_mean"] == pytest.approx((3 + cos3) / 4)
    # under ref, row 2's neighbour is 3; under cand it is 1 (row 3 moved away) -> not all agree
    assert q["top1_agree"] < 1.0
    assert q["top5_agree"] == 1.0  # with 4 rows every other row is among the top 3


def test_quality_dispatch_and_errors():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    assert quality("classification", logits, labels=torch.tensor([0, 1, 1]))["acc"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="labels"):
        quality("classification", logits)
    with pytest.raises(ValueError, match="reference"):
        quality("embedding", logits)
    with pytest.raises(ValueError, match="differ"):
        embedding_quality(torch.zeros(3, 2), torch.zeros(3, 4))
    assert math.isnan(embedding_quality(torch.ones(1, 2), torch.ones(1, 2))["top1_agree"])


def test_embedding_loss_zero_at_teacher_and_decreases_by_gradient():
    t = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    assert float(embedding_loss(t.clone(), t)) == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(16, 6, generator=torch.Generator().manual_seed(2)).requires_grad_()
    opt = torch.optim.Adam([s], lr=0.05)
    loss_fn = loss_for("embedding")
    first = None
    for _ in range(200):
        loss = loss_fn(s, torch.full((16,), -1), t)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.1 * first


def test_classification_loss_is_hinton_kd():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, -1, 2])
    from tasks.training.losses import kd_loss

    assert float(loss_for("classification", temperature=2.0, alpha=0.5)(s, y, t)) == pytest.approx(
        float(kd_loss(s, t, y, temperature=2.0, alpha=0.5))
    )
