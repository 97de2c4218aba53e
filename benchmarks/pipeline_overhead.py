"""What does the engine cost on a real pipeline? `compress` through the engine (Ray start,
MLflow tracking, artifact storage, cache off) against the same task functions called one after
another in a plain script with the same configs and the same trial selection.

Prints ONE JSON object; the goal is engine / plain <= 1.10.

    .venv/bin/python benchmarks/pipeline_overhead.py [overrides...]   # e.g. experiment=smoke
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import launch  # benchmarks/ is the script's directory
from machine import machine_info


def plain(spec, seed: int, per_step: dict) -> float:
    """Run the spec's tasks in topological order in this process; select trials like the engine."""
    from pipelines.config.select import choose
    from pipelines.config.spec import build_config
    from tasks import TASKS
    from tasks.core.context import StepContext

    outputs, summaries = {}, {}
    start = time.perf_counter()
    for s in spec.steps.values():
        step_start = time.perf_counter()
        trials = []
        for t in s.trials:
            kwargs = {}
            for param, refs in s.inputs.items():
                vals = [v for r in refs for v in (outputs[r.step]["all"] if r.all_trials else [outputs[r.step]["sel"]])]
                kwargs[param] = vals if param in s.list_inputs else vals[0]
            ctx = StepContext(step=f"{s.name}[{t.label}]" if t.label else s.name, seed=seed)
            trials.append((TASKS[s.task](**kwargs, cfg=build_config(s.task, t.params), ctx=ctx), ctx.summary))
        best, _ = choose(s.select, {i: summary for i, (_, summary) in enumerate(trials)}, summaries)
        outputs[s.name] = {"all": [o for o, _ in trials], "sel": trials[best][0]}
        summaries[s.name] = trials[best][1]
        per_step[s.name] = round(time.perf_counter() - step_start, 1)
    return time.perf_counter() - start


def engine(cfg, spec, ray_cfg, tracking, overrides, per_step: dict) -> tuple[float, int]:
    from pipelines.run import session

    start = time.perf_counter()
    out = session.execute(cfg, spec, ray_cfg, tracking, overrides)
    per_step.update({n: round(st.ended - st.started, 1) for n, st in out.states.items()})
    return time.perf_counter() - start, out.exit_code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="slimray overrides, e.g. experiment=smoke")
    given = ap.parse_args().overrides
    from pipelines.config.compose import load_config
    from pipelines.run import session

    launch.quiet_here()  # here and in the Ray workers the engine starts
    overrides = [*given, "cache=false"]
    home = os.getcwd()
    cfg = load_config([*overrides, "tracking.uri=sqlite:///unused.db"])
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        cfg.tracking.uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        spec, ray_cfg, tracking = session.validate(cfg)
        engine_steps, plain_steps = {}, {}
        engine_s, code = engine(cfg, spec, ray_cfg, tracking, overrides, engine_steps)
        plain_s = plain(spec, int(cfg.seed), plain_steps)
        os.chdir(home)
    ratio = engine_s / plain_s
    print(
        json.dumps(
            {
                "pipeline": spec.name,
                "overrides": given,
                "engine_s": round(engine_s, 1),
                "plain_s": round(plain_s, 1),
                "ratio": round(ratio, 3),
                "target": 1.10,
                "ok": ratio <= 1.10 and code == 0,
                "engine_steps_s": engine_steps,
                "plain_steps_s": plain_steps,
                **machine_info(threads=os.cpu_count()),  # both runs use the whole machine
            }
        )
    )


if __name__ == "__main__":
    main()
