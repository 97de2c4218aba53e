"""The ``lm_prune`` step: a smaller causal language model cut from the teacher, before healing.

Depth (``layers``): the decoder layers whose removal changes the hidden states least on the
calibration rows are dropped (ShortGPT's block influence, ``tasks.llm.depth``). Width
(``ffn_keep``, ``kv_groups_keep``): FFN channels by activation importance and attention heads by
whole KV groups, so grouped-query attention stays valid (Minitron's width axes,
``tasks.llm.width``). The result is healed by distillation on the teacher's top-k logits
(``lm_distill``); unhealed it is usually far outside any perplexity budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.core.checks import at_least, require
from tasks.core.context import StepContext
from tasks.llm.types import CausalLM, TokenSet


@dataclass
class LmPruneConfig:
    layers: int = 0  # decoder layers to keep (0: all)
    ffn_keep: float = 1.0  # share of FFN channels kept in every layer
    kv_groups_keep: int = 0  # KV groups (each KV head with its query heads) kept per layer (0: all)
    calib_rows: int = 8  # calibration rows that rank layers / channels / groups

    def __post_init__(self) -> None:
        at_least("layers", self.layers, 0)
        at_least("kv_groups_keep", self.kv_groups_keep, 0)
        at_least("calib_rows", self.calib_rows, 1)
        require("ffn_keep", 0 < self.ffn_keep <= 1, "must be in (0, 1]")


def run(teacher: CausalLM, data: TokenSet, *, cfg: LmPruneConfig, ctx: StepContext) -> CausalLM:
    """The teacher with ``cfg.layers`` layers and the given FFN / KV-group widths."""
    from tasks.llm.depth import depth_prune
    from tasks.llm.model import build_causal_lm, config_dict, lm_state, load_lm_state
    from tasks.llm.width import width_prune

    model = build_causal_lm(teacher.config)
    load_lm_state(model, teacher.state_dict)
    total = int(model.config.num_hidden_layers)
    require("layers", cfg.layers <= total, f"the teacher has {total} layers")
    calib = data.calib[: cfg.calib_rows]
    info: dict = {}
    if cfg.layers and cfg.layers < total:
        model, depth = depth_prune(model, calib, cfg.layers)
        info.update(kept_layers=depth["kept"], dropped_layers=depth["dropped"])
        ctx.note(f"lm_prune: dropped layers {depth['dropped']} of {total}")
    if cfg.ffn_keep < 1 or cfg.kv_groups_keep:
        model, width = width_prune(model, calib, cfg.ffn_keep, cfg.kv_groups_keep or None)
        info.update(width)
    params = sum(p.numel() for p in model.parameters())
    ctx.log_metrics({"params": params, "layers": int(model.config.num_hidden_layers)})
    return CausalLM(
        name=ctx.step,
        config=config_dict(model),
        state_dict=lm_state(model),
        tokenizer=teacher.tokenizer,
        parent=teacher.name,
        metrics={"params": params, **info},
    )
