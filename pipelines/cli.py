"""The ``slimray`` command: compose the Hydra config, validate it, run it.

    slimray [pipeline=compress] [experiment=smoke] [KEY=VALUE ...] [--cfg] [--dry-run]
    slimray -m|--multirun [--jobs=N] KEY=A,B KEY=range(..) ...   (Hydra sweeps, concurrent on one Ray)
    slimray submit [KEY=VALUE ...]    (a Ray Job on the cluster in RAY_API_SERVER_ADDRESS)
    slimray key init [PATH] | key id  (create a store's cache signing key; show the key's id)

Config errors print one line naming the config path and exit with code 2, before Ray starts
or any MLflow run is created (with --multirun: in any execution). A failed step exits 1 (with
--multirun: a failed execution; the others still finish); Ctrl-C exits 130.
"""

from __future__ import annotations

import sys

from pipelines import api
from pipelines.store import signing

USAGE = __doc__.strip().splitlines()[2]
SUBCOMMANDS = {"serve": api.serve, "submit": api.submit, "key": signing.main}  # `submit`: the pipeline as a Ray Job


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    api.importable_cwd()
    if args[:1] and args[0] in SUBCOMMANDS:
        return SUBCOMMANDS[args[0]](args[1:])
    if {"-h", "--help"} & set(args):
        print(__doc__.strip())
        return 0
    multirun = bool({"-m", "--multirun"} & set(args))
    args = [a for a in args if a not in ("-m", "--multirun")]
    flags = {a for a in args if a.startswith("--")}
    jobs = [a for a in flags if a.startswith("--jobs=")]
    unknown = flags - {"--cfg", "--dry-run", *jobs}
    overrides = [a for a in args if not a.startswith("--")]
    api.quiet_ray_logs()
    if unknown:
        print(f"error: unknown option {sorted(unknown)[0]} (usage: {USAGE.strip()})", file=sys.stderr)
        return 2
    if jobs and not (multirun and jobs[0][7:].isdigit() and int(jobs[0][7:]) > 0):
        print(f"error: {jobs[0]}: needs --multirun and a positive number", file=sys.stderr)
        return 2
    show = "--cfg" if "--cfg" in flags else "--dry-run" if "--dry-run" in flags else None
    if multirun:
        return api.multirun(overrides, show, int(jobs[0][7:]) if jobs else 4)
    return api.run(overrides, show)


if __name__ == "__main__":
    sys.exit(main())
