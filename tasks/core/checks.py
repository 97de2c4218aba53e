"""The allowed values of config fields, checked where each config dataclass is declared.

A step's config dataclass checks its fields in ``__post_init__`` with these helpers, so a value out
of range fails whenever the object is built: at validation, before Ray starts
(``pipelines.config.spec`` builds every step's and every sweep trial's config), and again in the
Ray task. ``BadValue.key`` is the field's name in its dataclass (``amount``, ``mutual.keep``); the
validator puts the config path in front (``pipeline.steps.prune.params.amount: 1.5 is not in
[0, 1)``). Nothing here imports more than the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class BadValue(ValueError):
    """A config value outside what its field allows: ``key`` names the field, ``message`` the rule."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message

    def __reduce__(self) -> tuple:
        # rebuilt from (key, message): raised in a Ray worker, it must unpickle on the driver
        return (type(self), (self.key, self.message))


def _bounds(low: float | None, high: float | None, open_low: bool, open_high: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    if low is not None:
        return f"{'>' if open_low else '>='} {low:g}"
    return f"{'<' if open_high else '<='} {high:g}"


def interval(
    key: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    """``value`` lies between ``low`` and ``high`` (each inclusive unless open; None: unbounded)."""
    ok = not math.isnan(value)
    if low is not None:
        ok = ok and (value > low if open_low else value >= low)
    if high is not None:
        ok = ok and (value < high if open_high else value <= high)
    if not ok:
        raise BadValue(key, f"{value} is not {_bounds(low, high, open_low, open_high)}")


def at_least(key: str, value: float, low: float) -> None:
    """``value >= low`` (counts, sizes, epochs)."""
    interval(key, value, low)


def positive(key: str, value: float) -> None:
    """``value > 0`` (learning rates, temperatures, ratios)."""
    interval(key, value, 0, open_low=True)


def fraction(key: str, value: float, *, open_low: bool = False, open_high: bool = False) -> None:
    """``value`` in [0, 1] (each end excluded when open)."""
    interval(key, value, 0, 1, open_low=open_low, open_high=open_high)


def one_of(key: str, value: object, allowed: Iterable[object]) -> None:
    """``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise BadValue(key, f"{value!r} is not one of {allowed}")


def each_at_least(key: str, values: Iterable[float], low: float) -> None:
    """Every item of a list field is ``>= low`` (the error names the item: ``speed_threads[1]``)."""
    for i, v in enumerate(values):
        at_least(f"{key}[{i}]", v, low)


def require(key: str, ok: bool, message: str) -> None:
    """A rule across fields: ``message`` (naming the fields involved) unless ``ok``."""
    if not ok:
        raise BadValue(key, message)
