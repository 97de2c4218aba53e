"""Deep Mutual Learning: the loss against a hand computation, the gradient split between the two
students, and a smoke run of ``distill`` with ``method: mutual``."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.core.context import StepContext
from tasks.models.build import load_model
from tasks.steps.distill import run
from tasks.training.loop import accuracy
from tasks.training.losses import mutual_loss
from tasks.training.mutual import MutualConfig, Pair
from tests.test_distill import _cfg, _problem


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


def _hand(s1, s2, y, t, T, beta, gamma):
    """mean over rows of L_1 + L_2, in plain Python (module docstring of tasks/training/mutual.py)."""
    total = 0.0
    for a, b, yi, ti in zip(s1.tolist(), s2.tolist(), y.tolist(), t.tolist()):
        for me, peer in ((a, b), (b, a)):
            ce = -math.log(_softmax(me, 1.0)[yi]) if yi >= 0 else 0.0
            pm = _softmax(me, T)
            loss = ce + beta * T * T * _kl(_softmax(peer, T), pm) + gamma * T * T * _kl(_softmax(ti, T), pm)
            total += loss
    return total / len(y)


@pytest.mark.parametrize("T, beta, gamma", [(1.0, 1.0, 0.0), (3.0, 0.5, 0.0), (2.0, 1.0, 0.7)])
def test_mutual_loss_matches_the_formula(T, beta, gamma):
    g = torch.Generator().manual_seed(0)
    s1, s2, t = (torch.randn(5, 4, generator=g, dtype=torch.float64) * k for k in (1, 2, 3))
    y = torch.tensor([0, 3, -1, 2, 1])
    got = mutual_loss(s1, s2, y, t, temperature=T, peer_weight=beta, teacher_weight=gamma)
    assert float(got) == pytest.approx(_hand(s1, s2, y, t, T, beta, gamma), rel=1e-9)


def test_identical_students_reduce_to_cross_entropy():
    s = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])
    ce = torch.nn.functional.cross_entropy(s, y)
    assert float(mutual_loss(s, s.clone(), y, temperature=2.0, peer_weight=5.0)) == pytest.approx(
        2 * float(ce), rel=1e-6
    )


def test_each_student_gets_only_its_own_loss_gradient():
    """The peer is a constant target: d(L_1 + L_2)/d s1 = dL_1/d s1 (what the paper's alternating steps use)."""
    g = torch.Generator().manual_seed(2)
    s1, s2 = torch.randn(3, 4, generator=g, requires_grad=True), torch.randn(3, 4, generator=g, requires_grad=True)
    y = torch.tensor([1, -1, 3])
    mutual_loss(s1, s2, y, temperature=1.0, peer_weight=1.0).backward()
    one = s1.detach().clone().requires_grad_(True)
    l1 = torch.nn.functional.cross_entropy(one, y.clamp_min(0), reduction="none") * (y >= 0)
    p2 = torch.softmax(s2.detach(), 1)
    l1 = (l1 + (p2 * (p2.log() - torch.log_softmax(one, 1))).sum(1)).mean()
    l1.backward()
    torch.testing.assert_close(s1.grad, one.grad)


def test_pair_concatenates_in_training_and_averages_in_eval():
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    pair, x = Pair(a, b), torch.randn(2, 4)
    torch.testing.assert_close(pair.train()(x), torch.cat([a(x), b(x)], 1))
    torch.testing.assert_close(pair.eval()(x), (a(x) + b(x)) / 2)


def test_smoke_run_returns_the_better_student_and_both_as_a_sweep():
    data, logits = _problem()
    cfg = _cfg(method="mutual", temperature=1.0, mutual=MutualConfig())
    art = run(data, logits, cfg=cfg, ctx=StepContext(step="dml", seed=0))
    m = art.metrics
    assert art.kind == "student_kd" and art.parent is None  # no teacher term: the teacher is not a parent
    assert m["val_acc"] == max(m["student0_val_acc"], m["student1_val_acc"])
    assert m["kept_student"] == float(m["student1_val_acc"] > m["student0_val_acc"])
    assert accuracy(load_model(art), data.x_test, data.y_test) > 0.55  # chance: 1/3; 60 labels, no teacher
    assert accuracy(load_model(art), data.x_val, data.y_val) == pytest.approx(m["val_acc"])
    both = [
        run(
            data,
            logits,
            cfg=_cfg(method="mutual", temperature=1.0, mutual=MutualConfig(keep=k)),
            ctx=StepContext(seed=0),
        )
        for k in (0, 1)
    ]
    assert [b.metrics["val_acc"] for b in both] == [m["student0_val_acc"], m["student1_val_acc"]]
    kept = both[int(m["kept_student"])]
    assert all(torch.equal(kept.state_dict[k], v) for k, v in art.state_dict.items())  # seeded: the same student
    with_teacher = _cfg(
        method="mutual", mutual=MutualConfig(teacher_weight=1.0, peer={"_target_": "tasks.models.zoo.MLP"})
    )
    out = run(data, logits, cfg=with_teacher, ctx=StepContext(step="dml_t", seed=0))
    assert out.parent == "oracle" and accuracy(load_model(out), data.x_test, data.y_test) > 0.8


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"mutual": MutualConfig(keep=2)}, "mutual.keep: 2 is not one of"),
        ({"mutual": MutualConfig(peer_weight=-1.0)}, "mutual.peer_weight: -1.0 is not >= 0"),
        ({"hint_layer": "net.0", "teacher_feature": "f"}, "hint_layer: FitNets hints are for method hinton"),
    ],
)
def test_bad_mutual_config_names_the_key(kw, match):
    data, logits = _problem(n_transfer=10)
    with pytest.raises(ValueError, match=match):
        run(data, logits, cfg=_cfg(method="mutual", **kw), ctx=StepContext())
