"""The one config loader: the packaged conf/ plus the user's config folders (a Hydra search path),
composed with the command line's overrides; and the one-line form of a config error."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from pipelines.config import schema
from pipelines.config.errors import SpecError


def conf_dir() -> Path:
    """The packaged configs: the conf/ folder beside the packages (a checkout or an editable
    install). A wheel installed elsewhere has none beside it: then the first ``SLIMRAY_CONF``
    folder holding a ``config.yaml`` (the container image sets ``SLIMRAY_CONF=/app/conf``)."""
    beside = Path(__file__).resolve().parents[2] / "conf"
    named = [Path(p) for p in os.environ.get("SLIMRAY_CONF", "").split(os.pathsep) if p]
    for path in (beside, *named):
        if (path / "config.yaml").exists():
            return path.resolve()
    raise SpecError("conf", f"no config.yaml in {beside} or a SLIMRAY_CONF folder (a broken install?)")


def user_conf_dirs() -> list[Path]:
    """Config folders that add to the packaged ones (a Hydra search path): the folders in
    ``SLIMRAY_CONF`` (os.pathsep-separated), then ./conf. Their group options (``model/mine.yaml``,
    ``pipeline/mine.yaml``, ...) are found by name beside the packaged ones."""
    dirs = [Path(p) for p in os.environ.get("SLIMRAY_CONF", "").split(os.pathsep) if p] + [Path.cwd() / "conf"]
    packaged, out = conf_dir(), []
    for d in dirs:
        if d.is_dir() and d.resolve() != packaged and d.resolve() not in out:
            out.append(d.resolve())
    return out


def one_line(e: BaseException | None) -> str:
    """Hydra/OmegaConf messages span lines and chain causes; the user gets one line."""
    parts, key = [], None
    while e is not None:
        text = str(e).split("Config search path")[0]
        found = re.search(r"full_key:\s*(\S+)", text)
        key = key or (found.group(1) if found else None)
        parts += [
            ln.strip().rstrip(".:")
            for ln in text.splitlines()
            if ln.strip() and not ln.strip().startswith(("full_key", "object_type", "reference_type"))
        ]
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)  # 'from None' ends it
    msg = "; ".join(dict.fromkeys(p for p in parts if p and "$VALUE" not in p))
    return f"{key}: {msg}" if key and key not in msg else msg


def load_config(
    overrides: list[str],
    config_dir: Path | None = None,
    config_name: str = "config",
    register: Callable[[], None] = schema.register,
):
    """``config_name`` from ``config_dir`` composed with ``overrides`` against the schemas that
    ``register`` stores. The default is the root ``config`` of the packaged conf/, to which the
    user's config folders add (``user_conf_dirs``); ``slimray serve`` composes ``conf/serve``."""
    register()
    search = [f"file://{d}" for d in user_conf_dirs()] if config_dir is None else []
    extra = [f"hydra.searchpath=[{','.join(search)}]"] if search else []
    if config_name == "config":
        overrides = [select_field(select_model(o)) for o in overrides]
    with initialize_config_dir(config_dir=str(config_dir or conf_dir()), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=[*extra, *overrides])
    if config_name == "config":
        check_models(cfg)
        check_select_steps(cfg, overrides)
        pin_swept(cfg, overrides)
    return cfg


SELECT_FIELD = re.compile(
    rf"^(?:\+\+)?pipeline\.steps\.([^.=]+)\.select\.(?:{'|'.join(f.name for f in fields(schema.SelectConfig))})="
)


def select_field(override: str) -> str:
    """``pipeline.steps.<step>.select.<field>=v`` for a field ``SelectConfig`` declares sets it
    whether or not the pipeline's YAML wrote it (Hydra's ``++``): a step's ``select`` block is a
    plain mapping until validation types it against ``SelectConfig`` (the root schema stays out of
    the defaults list so ``~key`` deletion keeps working), so a field left at its default
    (``confidence``) would otherwise need ``+``. Any other key is left to Hydra and the schema."""
    return f"++{override}" if SELECT_FIELD.match(override) and not override.startswith("++") else override


def check_select_steps(cfg, overrides: list[str]) -> None:
    """A ``select`` field set on a step the pipeline does not have is an error naming the step
    (``++`` would otherwise add a step holding nothing but that field)."""
    steps = OmegaConf.select(cfg, "pipeline.steps")
    for o in overrides:
        found = SELECT_FIELD.match(o)
        if found and OmegaConf.select(cfg, f"pipeline.steps.{found.group(1)}.task") is None:
            names = sorted(n for n in steps if OmegaConf.select(steps, f"{n}.task") is not None)
            raise SpecError(f"pipeline.steps.{found.group(1)}", f"no such step in the pipeline (steps: {names})")


MODEL_OVERRIDE = re.compile(rf"^({'|'.join(schema.MODEL_KEYS)})=([\w.-]+)$")


def model_options() -> list[str]:
    """The model configs by name: the ``model/*.yaml`` files of every config folder."""
    dirs = [conf_dir(), *user_conf_dirs()]
    return sorted({f.stem for d in dirs for f in (d / "model").glob("*.yaml")})


def select_model(override: str) -> str:
    """``teacher_model=mine`` selects the model config ``model/mine.yaml`` when there is one (the
    group option of that key, Hydra's ``model@teacher_model=mine``); other overrides pass."""
    found = MODEL_OVERRIDE.match(override)
    if found and found.group(2) in model_options():
        return f"model@{found.group(1)}={found.group(2)}"
    return override


def check_models(cfg) -> None:
    """A model key holds a model config (a mapping), never a bare name: ``teacher_model=mine``
    with no ``model/mine.yaml`` on the search path fails here, naming the key and the options."""
    for key in schema.MODEL_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, DictConfig):
            raise SpecError(key, f"no model config '{value}' (model options: {', '.join(model_options())})")


STEP_PARAM = re.compile(r"^pipeline\.steps\.([^.]+)\.(params\..+)$")


def pin_swept(cfg, overrides: list[str]) -> None:
    """An explicit override of a parameter the step sweeps pins the sweep to that value:
    ``pipeline.steps.prune.params.amount=0.3`` means amount 0.3, not "overridden by the sweep"
    (so ``-m pipeline.steps.prune.params.amount=0.3,0.5`` gives two different executions)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for o in OverridesParser.create().parse_overrides(overrides):
        m = STEP_PARAM.match(o.key_or_group)
        sweep = OmegaConf.select(cfg, f"pipeline.steps.{m.group(1)}.sweep") if m and not o.is_delete() else None
        if sweep is not None and m and m.group(2) in sweep:
            sweep[m.group(2)] = [OmegaConf.select(cfg, o.key_or_group)]
