"""``python -m pipelines.search [--points N] [OVERRIDES]``: print the search space of the composed
config as a ``slimray -m`` grid command (the same space, run as a Hydra multirun)."""

from __future__ import annotations

import shlex
import sys

from pipelines.config.compose import load_config, one_line
from pipelines.config.errors import CONFIG_ERRORS, SpecError
from pipelines.search import plan_of
from pipelines.search.space import grid_overrides


def main(argv: list[str]) -> int:
    points = 3
    if argv[:1] == ["--points"] and len(argv) > 1 and argv[1].isdigit():
        points, argv = int(argv[1]), argv[2:]
    try:
        cfg = load_config(argv)
        plan = plan_of(cfg)
    except CONFIG_ERRORS as e:  # Hydra/OmegaConf/SpecError: one line, exit 2
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    if plan is None:
        print(f"error: {SpecError('pipeline.search', 'this pipeline has no enabled search')}", file=sys.stderr)
        return 2
    print(shlex.join(["slimray", "-m", *argv, *grid_overrides(plan, points, cfg)]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
