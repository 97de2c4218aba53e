"""Multi-task distillation on MNIST-1D: one student with a head per task vs single-task students
of the same trunk, each task's teacher as the reference (mean of the seeds).

Tasks: the digit class and a derived label set (``--aux parity`` or ``gt4``). One teacher per task
(conf/model/cnn1d_teacher.yaml, trained once), its logits over the labeled rows + transfer pool;
then per seed, with the same schedule (tasks/steps/distill.py defaults) and trunk (``--student``): the
multi-task student (``distill`` method ``multitask``, weights ``--weights``) and one single-task
KD student per task. Test accuracy per task, each mean with its 95% interval over the seeds
(``*_ci95``; the multi-task vs single-task difference is paired by seed). Prints ONE JSON object.

    .venv/bin/python benchmarks/multitask_gain.py [--seeds N] [--aux parity] [--epochs N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
from kd_gain import _model, _train  # benchmarks/ is the script's directory
from machine import machine_info
from seeded import add_seeds, mean_ci

from tasks.core.context import StepContext
from tasks.models.build import complete_arch, count_params, load_model, make_artifact
from tasks.models.multihead import MULTIHEAD, head_accuracies
from tasks.steps import data as data_task
from tasks.steps import distill, infer
from tasks.steps.relabel import RelabelConfig
from tasks.steps.relabel import run as relabel
from tasks.training.loop import OptimConfig, accuracy
from tasks.training.multitask import MultitaskConfig


def main() -> None:
    defaults = distill.DistillConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_seeds(p)
    p.add_argument("--aux", default="parity", choices=["parity", "gt4"])
    p.add_argument("--weights", type=float, nargs=2, default=[1.0, 1.0])
    p.add_argument("--epochs", type=int, default=defaults.optim.epochs)
    p.add_argument("--student", default="cnn1d_student", help="a file of conf/model/ (the trunk)")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--n-transfer", type=int, default=25000)
    args = p.parse_args()

    t0 = time.perf_counter()
    digit = data_task.run(cfg=data_task.DataConfig(source="mnist1d", n_transfer=args.n_transfer), ctx=StepContext())
    aux = relabel(digit, cfg=RelabelConfig(labels=args.aux), ctx=StepContext())
    tasks = {"identity": digit, args.aux: aux}
    teachers, logits = {}, {}
    for name, d in tasks.items():
        arch = complete_arch(_model("cnn1d_teacher"), d.input_shape, d.num_classes)
        net, secs = _train(arch, d.x_train, d.y_train, d, OptimConfig(epochs=args.teacher_epochs), 0)
        art = make_artifact(net, arch, name=f"teacher_{name}", kind="teacher")
        teachers[name] = {
            "test_acc": accuracy(net, d.x_test, d.y_test),
            "params": count_params(net),
            "s": round(secs, 1),
        }
        logits[name] = infer.run(art, d, cfg=infer.InferConfig(), ctx=StepContext())
    base = dataclasses.replace(
        defaults, student=_model(args.student), optim=dataclasses.replace(defaults.optim, epochs=args.epochs)
    )
    mt_cfg = dataclasses.replace(
        base, method="multitask", multitask=MultitaskConfig(heads=list(tasks), weights=list(args.weights))
    )
    runs = []
    for seed in args.seeds:
        start = time.perf_counter()
        mt = distill.run(
            digit, logits["identity"], [logits[args.aux]], cfg=mt_cfg, ctx=StepContext(step="mt", seed=seed)
        )
        mt_s = time.perf_counter() - start
        mt_net = load_model(mt, (MULTIHEAD,))
        row = {
            "seed": seed,
            "multitask": head_accuracies(mt_net, digit.x_test, digit.y_test),
            "multitask_s": round(mt_s, 1),
        }
        row["multitask_params"] = count_params(mt_net)
        for name, d in tasks.items():
            single = distill.run(d, logits[name], cfg=base, ctx=StepContext(step=f"single_{name}", seed=seed))
            row.setdefault("single", {})[name] = accuracy(load_model(single), d.x_test, d.y_test)
            row.setdefault("single_params", {})[name] = count_params(load_model(single))
        runs.append(row)
    summary = {
        name: {
            **mean_ci("multitask", (r["multitask"][name] for r in runs)),
            **mean_ci("single", (r["single"][name] for r in runs)),
            "teacher": teachers[name]["test_acc"],
            **mean_ci("multitask_vs_single_points", (100 * (r["multitask"][name] - r["single"][name]) for r in runs)),
        }
        for name in tasks
    }
    print(
        json.dumps(
            {
                **machine_info(threads=torch.get_num_threads()),
                "benchmark": "multitask_gain",
                "dataset": "mnist1d",
                "tasks": list(tasks),
                "weights": args.weights,
                "student": {"trunk": base.student, "epochs": args.epochs, "temperature": base.temperature},
                "teachers": teachers,
                "seeds": len(runs),
                "summary": summary,
                "runs": runs,
                "total_s": round(time.perf_counter() - t0, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
