"""The distill task: the Hinton KD loss against a hand computation, masking of unlabeled rows,
multi-teacher averaging, FitNets hints and a tiny end-to-end run."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.core.context import StepContext
from tasks.core.types import Dataset, Logits
from tasks.models.build import build_model, complete_arch, load_model, make_artifact
from tasks.steps.distill import DistillConfig, average_logits, make_regressor, run
from tasks.steps.infer import InferConfig
from tasks.steps.infer import run as infer
from tasks.steps.train import TrainConfig
from tasks.steps.train import run as train
from tasks.training.loop import OptimConfig, accuracy
from tasks.training.losses import kd_loss


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _hand_loss(s, t, y, temperature, alpha):
    """The formula row by row in plain Python: alpha T^2 KL(p_t || p_s) + (1 - alpha) CE (labeled only)."""
    total = 0.0
    for si, ti, yi in zip(s.tolist(), t.tolist(), y.tolist()):
        ps, pt = _softmax(si, temperature), _softmax(ti, temperature)
        kl = sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
        ce = -math.log(_softmax(si, 1.0)[yi]) if yi >= 0 else 0.0
        total += alpha * temperature**2 * kl + (1 - alpha) * ce
    return total / len(y)


@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.5), (4.0, 0.9), (2.0, 0.0), (3.0, 1.0)])
def test_kd_loss_matches_the_formula(temperature, alpha):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=g, dtype=torch.float64), 3 * torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, -1, 2, -1, 1])
    got = kd_loss(s, t, y, temperature=temperature, alpha=alpha)
    assert float(got) == pytest.approx(_hand_loss(s, t, y, temperature, alpha), rel=1e-9)


def test_t_squared_factor_and_identical_logits():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    unlabeled = torch.full((5,), -1)
    kl_t4 = torch.nn.functional.kl_div(torch.log_softmax(s / 4, 1), torch.softmax(t / 4, 1), reduction="batchmean")
    assert float(kd_loss(s, t, unlabeled, temperature=4.0, alpha=1.0)) == pytest.approx(16 * float(kl_t4), rel=1e-5)
    assert float(kd_loss(t, t, unlabeled, temperature=2.0, alpha=0.7)) == pytest.approx(0.0, abs=1e-6)


def test_unlabeled_rows_get_no_cross_entropy():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    only_kd = kd_loss(s, t, torch.full((4,), -1), temperature=2.0, alpha=0.3)
    assert float(only_kd) == pytest.approx(0.3 * float(kd_loss(s, t, torch.full((4,), -1), temperature=2.0, alpha=1.0)))
    # a mixed batch is the mean of the per-row losses; the -1 rows ignore what a label would say
    y = torch.tensor([2, -1, 0, -1])
    mixed = kd_loss(s, t, y, temperature=2.0, alpha=0.3)
    rows = [kd_loss(s[i : i + 1], t[i : i + 1], y[i : i + 1], temperature=2.0, alpha=0.3) for i in range(4)]
    assert float(mixed) == pytest.approx(float(sum(rows) / 4), rel=1e-6)
    s_grad = s.clone().requires_grad_()
    kd_loss(s_grad, t, torch.tensor([-1, -1, -1, -1]), temperature=1.0, alpha=0.0).backward()
    assert torch.count_nonzero(s_grad.grad) == 0


def _problem(n_train=60, n_transfer=300):
    """Linearly separable 3-class data; the oracle's scaled scores serve as teacher logits."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 3, generator=g)
    x = torch.randn(n_train + n_transfer + 200, 16, generator=g)
    y = (x @ w).argmax(1)
    a, b = n_train, n_train + n_transfer
    data = Dataset(
        name="blobs",
        x_train=x[:a],
        y_train=y[:a],
        x_val=x[b : b + 100],
        y_val=y[b : b + 100],
        x_test=x[b + 100 :],
        y_test=y[b + 100 :],
        num_classes=3,
        x_transfer=x[a:b],
    )
    return data, Logits(train=3 * x[:a] @ w, transfer=3 * x[a:b] @ w, teacher="oracle")


def _cfg(**kw):
    base = dict(
        student={"_target_": "tasks.models.zoo.MLP", "hidden": [16]},
        optim=OptimConfig(epochs=5, batch_size=32, lr=3e-2),
    )
    return DistillConfig(**{**base, **kw})


def test_end_to_end_beats_chance_and_uses_the_pool():
    data, logits = _problem()
    ctx = StepContext(step="kd", seed=0)
    art = run(data, logits, cfg=_cfg(temperature=2.0, alpha=0.9), ctx=ctx)
    assert art.kind == "student_kd" and art.name == "kd" and art.parent == "oracle"
    assert art.metrics["rows"] == 360 and art.arch["input_shape"] == [16]
    assert accuracy(load_model(art), data.x_test, data.y_test) > 0.8  # chance: 1/3
    short = _cfg(use_transfer=False, optim=OptimConfig(epochs=1))
    labeled_only = run(data, logits, cfg=short, ctx=StepContext(seed=3))
    assert labeled_only.metrics["rows"] == 60
    again = run(data, logits, cfg=short, ctx=StepContext(seed=3))
    assert all(torch.equal(again.state_dict[k], v) for k, v in labeled_only.state_dict.items())  # seeded


def test_multi_teacher_is_the_mean_of_the_logits():
    data, a = _problem()
    b = Logits(train=-a.train.flip(1), transfer=a.transfer.roll(1, dims=1), teacher="other")
    mean = average_logits([a, b])
    assert torch.allclose(mean.train, (a.train + b.train) / 2) and mean.teacher == "oracle+other"
    assert torch.allclose(mean.transfer, (a.transfer + b.transfer) / 2)
    cfg = _cfg(optim=OptimConfig(epochs=2, batch_size=64))
    two = run(data, a, extra_logits=[b], cfg=cfg, ctx=StepContext())
    one = run(data, mean, cfg=cfg, ctx=StepContext())
    assert all(torch.allclose(two.state_dict[k], v) for k, v in one.state_dict.items())
    with pytest.raises(ValueError, match="teacher 'short' logits do not match 'oracle'"):
        run(
            data,
            a,
            extra_logits=[Logits(train=a.train[:5], transfer=a.transfer, teacher="short")],
            cfg=cfg,
            ctx=StepContext(),
        )


def test_fitnets_hint_trains_a_regressor_onto_teacher_features():
    data, _ = _problem()
    t_arch = complete_arch({"_target_": "tasks.models.zoo.CNN1D", "channels": [6, 6]}, [16], 3)
    torch.manual_seed(0)
    teacher = infer(
        make_artifact(build_model(t_arch), t_arch, name="t", kind="teacher"),
        data,
        cfg=InferConfig(features=["features.5"]),
        ctx=StepContext(),
    )
    student = {"_target_": "tasks.models.zoo.CNN1D", "channels": [2, 3]}
    optim = OptimConfig(epochs=1, batch_size=64)
    logged = {}
    for beta in (0.0, 10.0):
        ctx = StepContext()
        run(
            data,
            teacher,
            cfg=_cfg(student=student, optim=optim, hint_layer="features.5", teacher_feature="features.5", beta=beta),
            ctx=ctx,
        )
        logged[beta] = next(m["train_loss"] for _, m in ctx.history if "train_loss" in m)
    assert logged[10.0] > logged[0.0]  # the hint term is part of the optimized loss
    reg = make_regressor(torch.zeros(2, 3, 8), torch.zeros(2, 6, 4))
    assert reg(torch.zeros(2, 3, 8)).shape == (2, 6, 4)
    assert make_regressor(torch.zeros(2, 5), torch.zeros(2, 7))(torch.zeros(2, 5)).shape == (2, 7)
    with pytest.raises(ValueError, match="teacher_feature: 'features.2' not in logits.features"):
        run(
            data,
            teacher,
            cfg=_cfg(student=student, hint_layer="features.5", teacher_feature="features.2"),
            ctx=StepContext(),
        )


def test_bad_input():
    data, logits = _problem()
    with pytest.raises(ValueError, match="logits.train has 5 rows, data.x_train 60"):
        run(data, Logits(train=logits.train[:5]), cfg=_cfg(), ctx=StepContext())
    with pytest.raises(ValueError, match="logits.transfer has None rows, data.x_transfer 300"):
        run(data, Logits(train=logits.train), cfg=_cfg(), ctx=StepContext())
    with pytest.raises(ValueError, match="set hint_layer and teacher_feature together"):
        run(data, logits, cfg=_cfg(hint_layer="net.1"), ctx=StepContext())
    with pytest.raises(ValueError, match=r"temperature: 0.0 is not > 0"):
        run(data, logits, cfg=_cfg(temperature=0.0), ctx=StepContext())


NOISY = {  # settings under which the val accuracy goes up and down (checked below)
    "distill": OptimConfig(epochs=6, batch_size=32, lr=0.3, scheduler="none"),
    "train": OptimConfig(epochs=6, batch_size=8, lr=0.3, scheduler="none"),
}


@pytest.mark.parametrize("task", ["distill", "train"])
def test_reported_val_acc_is_that_of_the_returned_best_epoch_weights(task):
    """Selection reads a step's ``val_acc``: it must be the returned model's, not the last epoch's."""
    data, logits = _problem()
    ctx = StepContext(step=task, seed=0)
    if task == "distill":
        art = run(data, logits, cfg=_cfg(optim=NOISY[task]), ctx=ctx)
    else:
        student = {"_target_": "tasks.models.zoo.MLP", "hidden": [16]}
        art = train(data, cfg=TrainConfig(model=student, optim=NOISY[task]), ctx=ctx)
    curve = [m["epoch_val_acc"] for _, m in ctx.history if "epoch_val_acc" in m]
    assert len(curve) == 6 and curve[-1] < max(curve)  # the case that matters: the last epoch is not the best
    returned = accuracy(load_model(art), data.x_val, data.y_val)
    assert returned == pytest.approx(max(curve))
    assert ctx.summary["val_acc"] == art.metrics["val_acc"] == pytest.approx(returned)
    assert ctx.summary["best_epoch"] == curve.index(max(curve))
    assert [m for _, m in ctx.history if "val_acc" in m] == [
        {"val_acc": ctx.summary["val_acc"], "best_epoch": ctx.summary["best_epoch"]}
    ]


def test_no_transfer_pool_falls_back_to_the_labeled_rows(caplog):
    data, logits = _problem()
    data.x_transfer = None
    ctx = StepContext(step="kd")
    with caplog.at_level("WARNING", logger="slimray"):
        art = run(data, Logits(train=logits.train, teacher="oracle"), cfg=_cfg(use_transfer=True), ctx=ctx)
    assert art.metrics["rows"] == len(data.x_train) and ctx.summary["transfer_rows"] == 0
    notes = [r.getMessage() for r in caplog.records if "no transfer pool" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith("[kd] use_transfer")
    assert accuracy(load_model(art), data.x_test, data.y_test) > 0.5  # chance: 1/3


@pytest.mark.parametrize(
    "name, shape", [("cnn1d_teacher", [40]), ("cnn1d_student", [40]), ("mlp", [40]), ("rescnn2d", [1, 8, 8])]
)
def test_conf_model_files_build(name, shape):
    from pathlib import Path

    import yaml

    arch = yaml.safe_load((Path(__file__).resolve().parent.parent / "conf" / "model" / f"{name}.yaml").read_text())
    model = build_model(complete_arch(arch, shape, 10))
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    params = sum(p.numel() for p in model.parameters())
    if name == "cnn1d_student":
        assert 1000 <= params <= 5000
    if name == "cnn1d_teacher":
        assert params <= 1_000_000


def _vectors(n=64, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, x @ torch.randn(d, d, generator=g)  # a linear teacher: an nn.Linear student can match it


def test_embedding_fit_is_the_shared_loop_with_the_cos_mean_score():
    """fit_embedding goes through fit: the cos_mean score picks the kept weights (the start included),
    the scheduler decays the learning rate, patience stops early, and the metric names stay."""
    from tasks.training.embedding import fit_embedding

    x, t = _vectors()
    student = torch.nn.Linear(8, 8)
    ctx = StepContext()
    best = fit_embedding(student, x, t, cfg=OptimConfig(epochs=30, batch_size=16, lr=5e-2), ctx=ctx, val=(x, t))
    assert set(best) == {"cos_mean", "cos_min", "top1_agree", "top5_agree", "best_epoch"}
    assert best["cos_mean"] > 0.95 and best["best_epoch"] >= 0
    assert [m["epoch_cos_mean"] for _, m in ctx.history if "epoch_cos_mean" in m][-1] <= best["cos_mean"]
    assert ctx.summary["cos_mean"] == best["cos_mean"]
    # no learning (lr 0): the starting weights stay best and patience 2 stops after two epochs
    frozen, ctx = torch.nn.Linear(8, 8), StepContext()
    start = frozen.weight.detach().clone()
    cfg = OptimConfig(epochs=10, batch_size=16, lr=0.0, weight_decay=0.0, patience=2)
    got = fit_embedding(frozen, x, t, cfg=cfg, ctx=ctx, val=(x, t))
    assert got["best_epoch"] == -1.0 and sum("train_loss" in m for _, m in ctx.history) == 2
    assert torch.equal(frozen.weight, start)


def test_fit_decays_the_learning_rate_on_the_cosine_schedule_only_when_asked():
    """The schedule fit steps after every optimizer step: cosine reaches 0 at the last step, none keeps lr."""
    from tasks.training.loop import _scheduler, make_optimizer

    for name, last in (("cosine", 0.0), ("none", 1e-2)):
        cfg = OptimConfig(epochs=2, batch_size=8, lr=1e-2, scheduler=name)
        opt = make_optimizer(torch.nn.Linear(4, 2).parameters(), cfg)
        sched = _scheduler(opt, cfg, rows=32)
        for _ in range(8):  # 2 epochs x 4 batches
            opt.step()
            if sched is not None:
                sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(last, abs=1e-12)
