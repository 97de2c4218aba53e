"""Distilling a small random-initialised transformer into a shallower student on its embeddings."""

import pytest
import torch

from tasks.core.context import StepContext
from tasks.evaluation.quality import embedding_quality
from tasks.models.build import load_model, make_artifact
from tasks.steps import distill
from tasks.training.embedding import embed, trim_padding
from tasks.training.loop import OptimConfig
from tests.text_models import TRUSTED, text_dataset, tiny_encoder, token_rows

pytest.importorskip("transformers", reason="the nlp extra (pip install -e '.[nlp]')")


def test_trim_padding_cuts_to_the_longest_row_and_embed_keeps_row_order():
    x = token_rows(6, 20)
    longest = int(x[:, 1].sum(1).max())
    assert trim_padding(x).shape == (6, 3, longest)
    model, _ = tiny_encoder()
    with torch.no_grad():
        direct = model(x)
    torch.testing.assert_close(embed(model, x, batch_size=4), direct, atol=1e-5, rtol=1e-5)


def test_student_learns_the_teachers_embeddings_and_keeps_its_best_epoch():
    data = text_dataset(n_train=64)
    teacher_net, arch = tiny_encoder(layers=2, seed=3)
    teacher = make_artifact(teacher_net, arch, name="teacher", kind="teacher")
    _, student_arch = tiny_encoder(layers=1)
    cfg = distill.DistillConfig(student=student_arch, optim=OptimConfig(epochs=3, batch_size=16, lr=3e-3))
    ctx = StepContext(trusted_targets=TRUSTED)
    student = distill.run(data, teacher=teacher, cfg=cfg, ctx=ctx)
    assert student.arch["config"]["num_hidden_layers"] == 1 and student.parent == "teacher"
    ref = embed(teacher_net, data.x_val)
    ctx.seed_everything()
    untrained = embedding_quality(embed(distill.build_model(student_arch, TRUSTED), data.x_val), ref)["cos_mean"]
    after = embedding_quality(embed(load_model(student, TRUSTED), data.x_val), ref)["cos_mean"]
    assert after > untrained + 0.05
    assert student.metrics["cos_mean"] == pytest.approx(after, abs=1e-4)
    assert {"cos_min", "top1_agree", "top5_agree", "best_epoch"} <= set(student.metrics)
    epochs = [m["epoch_cos_mean"] for step, m in ctx.history if step is not None and "epoch_cos_mean" in m]
    assert len(epochs) == 3 and student.metrics["cos_mean"] == pytest.approx(max(epochs), abs=1e-6)


def test_layer_initialised_student_never_ends_below_its_start():
    data = text_dataset(n_train=32)
    teacher_net, arch = tiny_encoder(layers=3, seed=3)
    teacher = make_artifact(teacher_net, arch, name="teacher", kind="teacher")
    cfg = distill.DistillConfig(init_layers=[0, 2], optim=OptimConfig(epochs=1, batch_size=16, lr=5e-2))
    student = distill.run(data, teacher=teacher, cfg=cfg, ctx=StepContext(trusted_targets=TRUSTED))
    from tasks.models.transformer import layer_student

    start = distill.build_model(student.arch, TRUSTED)
    start.load_state_dict(layer_student(arch, teacher.state_dict, [0, 2])[1])
    before = embedding_quality(embed(start, data.x_val), embed(teacher_net, data.x_val))["cos_mean"]
    assert student.metrics["cos_mean"] >= before - 1e-6


def test_embedding_distill_needs_the_teacher():
    with pytest.raises(ValueError, match="need the teacher model"):
        distill.run(text_dataset(), cfg=distill.DistillConfig(init_layers=[0]), ctx=StepContext())
