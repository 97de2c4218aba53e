"""A small real pipeline that registers a model (digits: data -> teacher -> prune sweep -> export
-> static INT8 -> benchmark -> report), shared by the lineage and the browser tests."""

from __future__ import annotations

from omegaconf import OmegaConf

from pipelines.config.compose import load_config
from pipelines.run import session

REGISTRY = "lineage-digits"
AMOUNTS = (0.3, 0.5)
PIPELINE = {
    "name": "lineage",
    "steps": {
        "data": {"task": "data", "params": {"source": "digits", "n_transfer": 0}},
        "teacher": {
            "task": "train",
            "inputs": {"data": "data"},
            "params": {
                "model": {"_target_": "tasks.models.zoo.MLP", "hidden": [32]},
                "kind": "teacher",
                "optim": {"epochs": 2},
            },
        },
        "prune": {
            "task": "prune",
            "inputs": {"model": "teacher", "data": "data"},
            "params": {"method": "channel", "finetune": {"epochs": 1}},
            "sweep": {"params.amount": list(AMOUNTS)},
            "select": {"metric": "val_acc", "mode": "max"},
        },
        "export": {"task": "export", "inputs": {"model": "prune", "data": "data"}},
        "quantize": {
            "task": "quantize",
            "inputs": {"model": "export", "data": "data"},
            # the gate passes on every CPU (a lineage test, not a gate test: the INT8 model must be
            # the one selected and registered, however this CPU's kernels round a 2-epoch MLP)
            "params": {"method": "static_int8", "calib_batches": 2, "gate": {"min_agreement": 0.5}},
        },
        "benchmark": {
            "task": "benchmark",
            "inputs": {"models": ["teacher", "prune[*]", "quantize"], "data": "data", "selected": "quantize"},
            "params": {"warmup": 1, "iters_b1": 5, "iters_b256": 2},
        },
        "report": {
            "task": "report",
            "inputs": {"bench": "benchmark", "selected": "quantize"},
            "params": {"registry_name": REGISTRY},
        },
    },
}


def run_lineage(workdir, uri: str | None = None):
    """Run the pipeline into ``uri`` (default: ``workdir``'s sqlite store); returns the Outcome."""
    overrides = [f"tracking.uri={uri or f'sqlite:///{workdir}/mlflow.db'}"]
    cfg = load_config(overrides)
    cfg.pipeline = OmegaConf.create(PIPELINE)
    spec, ray_cfg, tracking = session.validate(cfg)
    out = session.execute(cfg, spec, ray_cfg, tracking, overrides)
    assert out.exit_code == 0, {n: (s.status, s.note) for n, s in out.states.items()}
    return out
