"""Multi-task distillation: derived labels, the multi-head student, the loss against a hand
computation, a smoke run of ``distill`` with ``method: multitask`` and the per-task report."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.core.context import StepContext
from tasks.core.types import Logits
from tasks.models.build import load_model
from tasks.models.multihead import MULTIHEAD, MultiHead, derive_labels, head_accuracies
from tasks.runtime.onnx import ort_session, to_onnx
from tasks.steps import multitask_report
from tasks.steps.distill import run
from tasks.steps.relabel import RelabelConfig
from tasks.steps.relabel import run as relabel
from tasks.steps.train import TrainConfig
from tasks.steps.train import run as train
from tasks.training.loop import OptimConfig, accuracy
from tasks.training.losses import multitask_loss
from tasks.training.multitask import MultitaskConfig
from tests.test_distill import _cfg, _problem


def test_derived_labels_by_hand():
    y = torch.tensor([0, 1, 2, 5, 9, -1])
    assert derive_labels(y, "parity").tolist() == [0, 1, 0, 1, 1, -1]
    assert derive_labels(y, "gt4").tolist() == [0, 0, 0, 1, 1, -1]
    assert derive_labels(y, "identity").tolist() == y.tolist()


def test_multihead_trains_on_every_head_and_deploys_head_zero():
    net = MultiHead([16], 10, {"_target_": "tasks.models.zoo.MLP", "hidden": [8]}, ["identity", "parity", "gt4"])
    x = torch.randn(5, 16)
    assert net.train()(x).shape == (5, 14) and net.eval()(x).shape == (5, 10)
    parts = net.forward_all(x)
    assert [p.shape[1] for p in parts] == [10, 2, 2]
    torch.testing.assert_close(net(x), parts[0])


def _hinton(s, t, y, T, alpha):
    total = 0.0
    for si, ti, yi in zip(s.tolist(), t.tolist(), y.tolist()):
        e = [math.exp(v / T) for v in si]
        f = [math.exp(v / T) for v in ti]
        ps, pt = [v / sum(e) for v in e], [v / sum(f) for v in f]
        kl = sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
        ce = -(si[yi] - math.log(sum(math.exp(v) for v in si))) if yi >= 0 else 0.0
        total += alpha * T * T * kl + (1 - alpha) * ce
    return total / len(y)


def test_multitask_loss_is_the_weighted_sum_of_per_head_hinton_losses():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)]
    t = [2 * torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)]
    y = torch.tensor([0, 2, -1, 1])
    ys = [y, derive_labels(y, "parity")]
    got = multitask_loss(s, ys, t, [1.0, 0.25], 2.0, 0.7)
    want = _hinton(s[0], t[0], ys[0], 2.0, 0.7) + 0.25 * _hinton(s[1], t[1], ys[1], 2.0, 0.7)
    assert float(got) == pytest.approx(want, rel=1e-9)


def _parity_logits(digit: Logits) -> Logits:
    """The oracle's parity scores: log-sum-exp of the even and of the odd classes' logits."""

    def two(z):
        return torch.stack([torch.logsumexp(z[:, 0::2], 1), torch.logsumexp(z[:, 1::2], 1)], 1)

    return Logits(train=two(digit.train), transfer=two(digit.transfer), teacher="oracle_parity")


@pytest.fixture(scope="module")
def trained():
    data, logits = _problem()
    cfg = _cfg(method="multitask", multitask=MultitaskConfig(heads=["identity", "parity"], weights=[1.0, 0.5]))
    art = run(data, logits, [_parity_logits(logits)], cfg=cfg, ctx=StepContext(step="mt", seed=0))
    return data, logits, art


def test_smoke_run_learns_every_head(trained):
    data, _, art = trained
    assert art.arch["_target_"] == MULTIHEAD and art.arch["heads"] == ["identity", "parity"]
    assert art.parent == "oracle+oracle_parity" and art.metrics["rows"] == 360
    with pytest.raises(ValueError, match="not allowed"):
        load_model(art)  # a stored arch names a class outside the zoo: the config must trust it
    net = load_model(art, (MULTIHEAD,))
    acc = head_accuracies(net, data.x_test, data.y_test)
    assert acc["identity"] > 0.8 and acc["parity"] > 0.7  # chance: 1/3 and ~1/2
    assert accuracy(net, data.x_test, data.y_test) == pytest.approx(acc["identity"])
    assert art.metrics["val_acc_parity"] == pytest.approx(head_accuracies(net, data.x_val, data.y_val)["parity"])
    sess = ort_session(to_onnx(net, data.x_test[:2]), 1)  # deploys as a plain classifier (head 0)
    out = sess.run(None, {sess.get_inputs()[0].name: data.x_test[:4].numpy()})[0]
    assert out.shape == (4, 3)


def test_report_compares_each_head_with_its_teacher_and_single_task_student(trained):
    data, logits, art = trained
    parity = relabel(data, cfg=RelabelConfig(labels="parity"), ctx=StepContext())
    assert parity.num_classes == 2 and parity.y_test.tolist() == (data.y_test % 2).tolist()
    assert torch.equal(parity.x_train, data.x_train) and parity.name == "blobs-parity"
    quick = OptimConfig(epochs=3, batch_size=32, lr=3e-2)
    mlp = {"_target_": "tasks.models.zoo.MLP", "hidden": [16]}
    teachers = [
        train(d, cfg=TrainConfig(model=mlp, optim=quick), ctx=StepContext(step=n))
        for d, n in ((data, "t0"), (parity, "t1"))
    ]
    singles = [
        run(data, logits, cfg=_cfg(), ctx=StepContext(step="s0")),
        run(parity, _parity_logits(logits), cfg=_cfg(), ctx=StepContext(step="s1")),
    ]
    out = multitask_report.run(
        data, art, teachers, singles, cfg=multitask_report.MultitaskReportConfig(), ctx=StepContext()
    )
    rows = {r["task"]: r for r in out.data["tasks"]}
    net = load_model(art, (MULTIHEAD,))
    assert rows["parity"]["student"] == head_accuracies(net, data.x_test, data.y_test)["parity"]
    assert rows["parity"]["teacher"] == pytest.approx(accuracy(load_model(teachers[1]), parity.x_test, parity.y_test))
    assert rows["identity"]["single"] == pytest.approx(accuracy(load_model(singles[0]), data.x_test, data.y_test))
    md = out.publish.files["multitask.md"].decode()
    assert (
        "| parity |" in md
        and "(t1)" in md
        and out.publish.metrics["parity.single_test_acc"] == rows["parity"]["single"]
    )
    with pytest.raises(ValueError, match="the student has 2 heads"):
        multitask_report.run(data, art, teachers[:1], cfg=multitask_report.MultitaskReportConfig(), ctx=StepContext())


@pytest.mark.parametrize(
    "mt, extra, match",
    [
        (MultitaskConfig(heads=["identity"], weights=[1.0]), 1, "need as many heads and weights"),
        (MultitaskConfig(heads=["parity", "identity"]), 1, r"heads\[0\]: must be identity"),
        (MultitaskConfig(weights=[1.0, -1.0]), 1, "weights: must be >= 0"),
        (
            MultitaskConfig(heads=["identity", "gt4"]),
            "wide",
            r"heads\[1\]: 'gt4' has 2 classes, its teacher's logits 3",
        ),
    ],
)
def test_bad_multitask_config_names_the_key(mt, extra, match):
    data, logits = _problem(n_transfer=10)
    other = logits if extra == "wide" else _parity_logits(logits)
    with pytest.raises(ValueError, match=match):
        run(data, logits, [other], cfg=_cfg(method="multitask", multitask=mt), ctx=StepContext())
