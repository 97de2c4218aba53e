"""The ``slimray`` command: compose the Hydra config, validate it, run it.

    slimray [pipeline=compress] [experiment=smoke] [KEY=VALUE ...] [--cfg] [--dry-run]
    slimray -m|--multirun [--jobs=N] KEY=A,B KEY=range(..) ...   (Hydra sweeps, concurrent on one Ray)
    slimray submit [KEY=VALUE ...]    (a Ray Job on the cluster in RAY_API_SERVER_ADDRESS)

Config errors print one line naming the config path and exit with code 2, before Ray starts
or any MLflow run is created (with --multirun: in any execution). A failed step exits 1 (with
--multirun: a failed execution; the others still finish); Ctrl-C exits 130.
"""

from __future__ import annotations

import os
import sys

from omegaconf import OmegaConf
from rich.console import Console

from pipelines.config.compose import conf_dir, load_config, one_line
from pipelines.config.errors import CONFIG_ERRORS

USAGE = __doc__.strip().splitlines()[2]


def quiet_ray_logs() -> None:
    """Ray forwards worker output to the driver with coloured ``(task pid=..)`` prefixes and
    folds repeats into ``[repeated 4x across cluster]`` lines. slimray's progress lines are
    rate-limited and distinct, so the folding only adds noise: off. Colours only on a terminal.
    Both are read when Ray is imported / prints, so set them first (a user's setting wins)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def importable_cwd() -> None:
    """A user's model module lives in their project (``_target_: mymodels.Net``): make the
    working directory importable here and in the Ray workers this process starts, as
    ``python -m`` does, so ``slimray`` needs no ``PYTHONPATH=.``."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if cwd not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, *paths) if p)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    importable_cwd()
    if args[:1] == ["serve"]:
        from pipelines.scale.serve import main as serve

        return serve(args[1:])
    if args[:1] == ["submit"]:  # `slimray submit [overrides]`: the same pipeline as a Ray Job
        from pipelines.scale import submit

        return submit.main(args[1:])
    if {"-h", "--help"} & set(args):
        print(__doc__.strip())
        return 0
    multirun = bool({"-m", "--multirun"} & set(args))
    args = [a for a in args if a not in ("-m", "--multirun")]
    flags = {a for a in args if a.startswith("--")}
    jobs = [a for a in flags if a.startswith("--jobs=")]
    unknown = flags - {"--cfg", "--dry-run", *jobs}
    overrides = [a for a in args if not a.startswith("--")]
    quiet_ray_logs()
    err = Console(stderr=True)
    if not err.is_terminal:
        err = Console(stderr=True, width=160)  # logs: wide enough that the table does not wrap
    if unknown:
        print(f"error: unknown option {sorted(unknown)[0]} (usage: {USAGE.strip()})", file=sys.stderr)
        return 2
    if jobs and not (multirun and jobs[0][7:].isdigit() and int(jobs[0][7:]) > 0):
        print(f"error: {jobs[0]}: needs --multirun and a positive number", file=sys.stderr)
        return 2
    if multirun:
        return run_multirun(overrides, flags, int(jobs[0][7:]) if jobs else 4, err)
    from pipelines import search  # imports ray/mlflow lazily, after argument checks
    from pipelines.run import session
    from pipelines.store import preflight
    from pipelines.store.tracking import resolve_uri

    try:
        cfg = load_config(overrides)
        spec, ray_cfg, tracking = session.validate(cfg)
        search_plan = search.plan_of(cfg)  # search hook: a pipeline with a `search` section
    except CONFIG_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    if "--cfg" in flags:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return 0
    if "--dry-run" in flags:
        for s in spec.steps.values():
            err.print(f"{s.name}: {s.task} <- {s.upstream or '-'} ({len(s.trials)} trial(s))", markup=False)
        return 0
    try:  # tracking store reachable? one line within seconds, before any Ray work (exit 2)
        preflight.check_tracking(resolve_uri(tracking.uri))
    except preflight.PreflightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if search_plan is not None:  # search hook: Ray Tune over the steps (pipelines/search/)
            from pipelines.search.driver import execute as search_execute

            outcome = search_execute(cfg, spec, search_plan, ray_cfg, tracking, overrides, err)
        else:
            outcome = session.execute(cfg, spec, ray_cfg, tracking, overrides, err)
    except KeyboardInterrupt:
        err.print("interrupted: Ray tasks cancelled, MLflow runs marked KILLED", markup=False)
        return 130
    session.summary(outcome, err)
    return outcome.exit_code


def run_multirun(overrides: list[str], flags: set[str], jobs: int, err: Console) -> int:
    """``-m``: Hydra's sweep over the overrides, every execution validated before any runs."""
    from pipelines.run import multirun
    from pipelines.store import preflight
    from pipelines.store.tracking import resolve_uri

    try:
        found = multirun.prepare(overrides, conf_dir(), load_config)
    except CONFIG_ERRORS as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    if "--cfg" in flags:
        for job in found:
            print(f"# execution {job.index}: {job.label or '(no sweep)'}")
            print(OmegaConf.to_yaml(job.cfg, resolve=True))
        return 0
    if "--dry-run" in flags:
        multirun.describe(found, err)
        return 0
    try:
        preflight.check_tracking(resolve_uri(found[0].tracking.uri))
    except preflight.PreflightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return multirun.run(found, err, jobs)
    except KeyboardInterrupt:
        err.print("interrupted: Ray tasks cancelled, MLflow runs marked KILLED", markup=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
