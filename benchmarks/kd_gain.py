"""Does distillation pay? KD student vs. scratch student (and two-way, mutual) on the MNIST-1D test set.

Trains the teacher (conf/model/cnn1d_teacher.yaml), computes its logits over the labeled train
split and the 25k-row unlabeled transfer pool, then for each seed trains the same student
architecture twice with the same epochs and seed: from scratch on the labeled rows (cross-entropy)
and by distillation (tasks/steps/distill.py defaults: labeled rows + transfer pool). Because KD sees
~8x more rows per epoch, the scratch student is also trained with as many optimizer steps as the
KD student (``scratch_steps``), and the gain is taken against the better of the two scratch runs.
Prints ONE JSON object; the goal is a mean gain of at least +1.0 accuracy point.

Two-way distillation (Deep Mutual Learning, ``distill`` method ``mutual``) adds two columns with
the same seeds: ``mutual`` - two students learning from the labels and each other, no teacher,
labeled rows only, with the optimizer steps of ``scratch_steps``; ``mutual_teacher`` - the same
plus the teacher's logits (``teacher_weight``) over labeled rows + transfer pool, with the KD
student's schedule. Each is the better of its two students on val (what the step returns).

Every mean comes with its 95% interval over the seeds (``*_ci95``, Student t; ``--seeds N``,
default 5), and each comparison with a verdict that states a difference only where its interval
excludes 0 (``verdicts``).

    .venv/bin/python benchmarks/kd_gain.py [--seeds N] [--epochs N] [--temperature T] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

import torch
import yaml
from machine import machine_info  # benchmarks/ is the script's directory
from seeded import add_seeds, mean_ci

from tasks.core.context import StepContext
from tasks.models.build import build_model, complete_arch, count_params, load_model, make_artifact
from tasks.steps import data as data_task
from tasks.steps import distill, infer
from tasks.training.loop import OptimConfig, accuracy, fit
from tasks.training.losses import ce_loss
from tasks.training.mutual import MutualConfig

CONF = Path(__file__).resolve().parent.parent / "conf"


def _model(name: str) -> dict:
    return yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())


def _train(arch: dict, x, y, data, optim: OptimConfig, seed: int):
    """Seeded scratch training on labeled rows; returns (model, seconds)."""
    ctx = StepContext(step="scratch", seed=seed)
    ctx.seed_everything()
    model = build_model(arch)
    start = time.perf_counter()
    fit(model, x, (y,), loss_fn=ce_loss, cfg=optim, ctx=ctx, val=(data.x_val, data.y_val))
    return model, time.perf_counter() - start


def _mutual(data, logits, cfg, seed: int) -> dict:
    """One DML run: test accuracy of the student the step returns, both students' val accuracy, seconds."""
    start = time.perf_counter()
    art = distill.run(data, logits, cfg=cfg, ctx=StepContext(step="mutual", seed=seed))
    m = art.metrics
    return {
        "test_acc": accuracy(load_model(art), data.x_test, data.y_test),
        "val_accs": [round(m["student0_val_acc"], 4), round(m["student1_val_acc"], 4)],
        "s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    defaults = distill.DistillConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_seeds(p)
    p.add_argument("--epochs", type=int, default=defaults.optim.epochs)
    p.add_argument("--temperature", type=float, default=defaults.temperature)
    p.add_argument("--alpha", type=float, default=defaults.alpha)
    p.add_argument("--student", default="cnn1d_student", help="a file of conf/model/")
    p.add_argument("--teacher", default="cnn1d_teacher", help="a file of conf/model/")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--n-transfer", type=int, default=25000)
    p.add_argument("--mutual-temperature", type=float, default=1.0, help="DML without a teacher (paper: 1)")
    p.add_argument("--mutual-teacher-weight", type=float, default=1.0)
    args = p.parse_args()

    t0 = time.perf_counter()
    data = data_task.run(cfg=data_task.DataConfig(source="mnist1d", n_transfer=args.n_transfer), ctx=StepContext())
    data_s = time.perf_counter() - t0
    t_arch = complete_arch(_model(args.teacher), data.input_shape, data.num_classes)
    teacher, teacher_s = _train(t_arch, data.x_train, data.y_train, data, OptimConfig(epochs=args.teacher_epochs), 0)
    t_art = make_artifact(teacher, t_arch, name="teacher", kind="teacher")
    logits = infer.run(t_art, data, cfg=infer.InferConfig(), ctx=StepContext())

    s_arch = complete_arch(_model(args.student), data.input_shape, data.num_classes)
    optim = dataclasses.replace(defaults.optim, epochs=args.epochs)
    kd_cfg = dataclasses.replace(
        defaults, student=_model(args.student), optim=optim, temperature=args.temperature, alpha=args.alpha
    )
    n_kd = len(data.x_train) + (0 if data.x_transfer is None else len(data.x_transfer))
    per_epoch = [math.ceil(n / optim.batch_size) for n in (n_kd, len(data.x_train))]
    optim_steps = dataclasses.replace(optim, epochs=args.epochs * per_epoch[0] // per_epoch[1])
    mutual_cfgs = {
        "mutual": dataclasses.replace(
            kd_cfg, method="mutual", temperature=args.mutual_temperature, use_transfer=False, optim=optim_steps
        ),
        "mutual_teacher": dataclasses.replace(
            kd_cfg, method="mutual", mutual=MutualConfig(teacher_weight=args.mutual_teacher_weight)
        ),
    }
    runs = []
    for seed in args.seeds:
        scratch, scratch_s = _train(s_arch, data.x_train, data.y_train, data, optim, seed)
        scratch_long, long_s = _train(s_arch, data.x_train, data.y_train, data, optim_steps, seed)
        start = time.perf_counter()
        kd_art = distill.run(data, logits, cfg=kd_cfg, ctx=StepContext(step="kd", seed=seed))
        kd_s = time.perf_counter() - start
        kd = load_model(kd_art)
        mutual = {name: _mutual(data, logits, c, seed) for name, c in mutual_cfgs.items()}
        runs.append(
            {
                "seed": seed,
                "scratch_test_acc": accuracy(scratch, data.x_test, data.y_test),
                "scratch_steps_test_acc": accuracy(scratch_long, data.x_test, data.y_test),
                "kd_test_acc": accuracy(kd, data.x_test, data.y_test),
                **{f"{name}_{k}": v for name, out in mutual.items() for k, v in out.items()},
                "scratch_s": round(scratch_s, 1),
                "scratch_steps_s": round(long_s, 1),
                "kd_s": round(kd_s, 1),
            }
        )
    best_scratch = [max(r["scratch_test_acc"], r["scratch_steps_test_acc"]) for r in runs]
    gains = [100 * (r["kd_test_acc"] - b) for r, b in zip(runs, best_scratch)]
    print(
        json.dumps(
            {
                **machine_info(threads=torch.get_num_threads()),
                "benchmark": "kd_gain",
                "dataset": "mnist1d",
                "n_train": len(data.x_train),
                "n_transfer": 0 if data.x_transfer is None else len(data.x_transfer),
                "teacher": {
                    "arch": t_arch,
                    "params": count_params(teacher),
                    "epochs": args.teacher_epochs,
                    "test_acc": accuracy(teacher, data.x_test, data.y_test),
                    "train_s": round(teacher_s, 1),
                },
                "student": {
                    "arch": s_arch,
                    "params": count_params(scratch),
                    "epochs": args.epochs,
                    "scratch_steps_epochs": optim_steps.epochs,
                    "batch_size": optim.batch_size,
                    "lr": optim.lr,
                    "temperature": args.temperature,
                    "alpha": args.alpha,
                },
                "runs": runs,
                "seeds": len(runs),
                **mean_ci("scratch", (r["scratch_test_acc"] for r in runs)),
                **mean_ci("scratch_steps", (r["scratch_steps_test_acc"] for r in runs)),
                **mean_ci("kd", (r["kd_test_acc"] for r in runs)),
                **mean_ci("mutual", (r["mutual_test_acc"] for r in runs)),
                **mean_ci("mutual_teacher", (r["mutual_teacher_test_acc"] for r in runs)),
                **mean_ci(
                    "mutual_vs_best_scratch_points",
                    (100 * (r["mutual_test_acc"] - b) for r, b in zip(runs, best_scratch)),
                ),
                **mean_ci(
                    "mutual_teacher_vs_kd_points",
                    (100 * (r["mutual_teacher_test_acc"] - r["kd_test_acc"]) for r in runs),
                ),
                "mutual": {
                    "temperature": args.mutual_temperature,
                    "epochs": optim_steps.epochs,
                    "teacher_weight_of_mutual_teacher": args.mutual_teacher_weight,
                },
                **mean_ci("gain_points", gains),
                "gain_points_min": min(gains),
                "target_gain_points": 1.0,
                "met": statistics.mean(gains) >= 1.0,
                "data_s": round(data_s, 1),
                "total_s": round(time.perf_counter() - t0, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
