"""Does fanning a sweep out on Ray pay? An 8-trial pruning sweep through the engine against the
same 8 `prune` calls one after another in one process (torch using both cores).

Prints ONE JSON object; the goal is a speed-up of at least 1.7x on 2 cores.

    .venv/bin/python benchmarks/sweep_scaling.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

from machine import machine_info  # benchmarks/ is the script's directory
from omegaconf import OmegaConf

METHODS = ["channel", "magnitude"]
AMOUNTS = [0.3, 0.5, 0.7, 0.9]


def pipeline(epochs: int, batch_size: int) -> dict:
    student = {"_target_": "tasks.models.zoo.CNN1D", "channels": [32, 32, 32]}
    return {
        "name": "sweep_scaling",
        "steps": {
            "data": {"task": "data", "params": {"source": "mnist1d", "n_transfer": 0}},
            "student": {
                "task": "train",
                "inputs": {"data": "data"},
                "params": {"model": student, "kind": "student_scratch", "optim": {"epochs": 10}},
            },
            "prune": {
                "task": "prune",
                "inputs": {"model": "student", "data": "data"},
                "cache": False,
                "params": {"finetune": {"epochs": epochs, "batch_size": batch_size}},
                "sweep": {"params.method": METHODS, "params.amount": AMOUNTS},
                "select": {"metric": "val_acc", "mode": "max"},
            },
        },
    }


def through_engine(spec_dict: dict, workdir: Path) -> tuple[float, object]:
    import ray

    from pipelines.config.compose import load_config
    from pipelines.run import session

    cfg = load_config(["pipeline=compress", f"tracking.uri=sqlite:///{workdir}/mlflow.db"])  # its steps are replaced
    cfg.pipeline = OmegaConf.create(spec_dict)
    spec, ray_cfg, tracking = session.validate(cfg)
    # one Ray for both executions (as on a running cluster): the measured sweep runs on warm workers
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    session.execute(cfg, spec, ray_cfg, tracking, [])  # warm-up: data + student get cached
    out = session.execute(cfg, spec, ray_cfg, tracking, [])
    st = out.states["prune"]
    assert out.exit_code == 0 and st.status == "done", {n: s.note for n, s in out.states.items()}
    return st.ended - st.started, out


def sequential(spec_dict: dict) -> float:
    """The same task functions, called one after another in this process."""
    from pipelines.config.spec import build_config
    from tasks.core.context import StepContext
    from tasks.steps import data as data_task
    from tasks.steps import prune, train

    steps = spec_dict["steps"]
    data = data_task.run(cfg=build_config("data", steps["data"]["params"]), ctx=StepContext())
    student = train.run(data, cfg=build_config("train", steps["student"]["params"]), ctx=StepContext())
    start = time.perf_counter()
    for method, amount in itertools.product(METHODS, AMOUNTS):
        params = {**steps["prune"]["params"], "method": method, "amount": amount}
        prune.run(student, data, cfg=build_config("prune", params), ctx=StepContext())
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15, help="fine-tune epochs per trial")
    p.add_argument("--batch-size", type=int, default=128, help="fine-tune batch size")
    args = p.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    spec = pipeline(args.epochs, args.batch_size)
    home = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        engine_s, _ = through_engine(spec, Path(tmp))
        os.chdir(home)
    import ray

    ray.shutdown()
    import torch

    seq_s = sequential(spec)
    speedup = seq_s / engine_s
    print(
        json.dumps(
            {
                **machine_info(threads=torch.get_num_threads()),
                "trials": len(METHODS) * len(AMOUNTS),
                "finetune_epochs": args.epochs,
                "finetune_batch_size": args.batch_size,
                "torch_threads_sequential": torch.get_num_threads(),
                "cores": os.cpu_count(),
                "sequential_s": round(seq_s, 2),
                "engine_sweep_s": round(engine_s, 2),
                "speedup": round(speedup, 2),
                "target": 1.7,
                "ok": speedup >= 1.7,
            }
        )
    )


if __name__ == "__main__":
    main()
