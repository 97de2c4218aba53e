"""The one DAG utility of the engine: input references, topological order, reachability.

A pipeline's graph is ``{step: upstream steps}`` read from each step's ``inputs``
(``task parameter -> 'step' | 'step[*]' | [refs]``). The validator (``pipelines.config.spec``)
and the search planner (``pipelines.search.config``) both walk it through these functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipelines.config.errors import SpecError

REF_RE = re.compile(r"^([A-Za-z_][\w-]*)(\[\*\])?$")

Graph = Mapping[str, Iterable[str]]  # step -> the steps it reads from


@dataclass(frozen=True)
class Ref:
    step: str
    all_trials: bool = False  # 'step[*]': the outputs of every trial of a sweep step


def parse_refs(value, path: str) -> list[Ref]:
    """An input's references (``'step'``, ``'step[*]'`` or a list of them), or a ``SpecError``."""
    refs = []
    for item in value if isinstance(value, list) else [value]:
        m = REF_RE.match(str(item)) if isinstance(item, str) else None
        if not m:
            raise SpecError(path, f"bad input reference '{item}' (use 'step' or 'step[*]')")
        refs.append(Ref(m.group(1), bool(m.group(2))))
    return refs


def upstream_of(inputs: Mapping | None) -> set[str]:
    """The step names a raw ``inputs`` mapping refers to (no checks: the validator's job)."""
    out = set()
    for value in (inputs or {}).values():
        for ref in value if isinstance(value, list) else [value]:
            out.add(str(ref).removesuffix("[*]"))
    return out


def toposort(graph: Graph) -> tuple[list[str], set[str]]:
    """(steps upstream first, the steps on a cycle). Kahn's algorithm: ready steps are taken in
    the mapping's order. Edges to names outside the graph are ignored. When there is a cycle the
    order holds the steps outside it, and the second item the cycle's members (steps that only
    hang below a cycle are left out of both)."""
    ups = {n: set(u) & set(graph) for n, u in graph.items()}
    indeg = {n: len(u) for n, u in ups.items()}
    order, ready = [], [n for n in graph if indeg[n] == 0]
    while ready:
        n = ready.pop(0)
        order.append(n)
        for m in graph:
            if n in ups[m]:
                indeg[m] -= 1
                if indeg[m] == 0:
                    ready.append(m)
    left = set(graph) - set(order)
    while drop := {n for n in left if not any(n in ups[m] for m in left)}:
        left -= drop  # below the cycle, not on it
    return order, left


def closure(graph: Graph, start: Iterable[str], down: bool = False) -> set[str]:
    """``start`` and every step upstream of it (``down``: downstream of it)."""
    ups = {n: set(u) & set(graph) for n, u in graph.items()}
    seen: set[str] = set()
    todo = list(start)
    while todo:
        n = todo.pop()
        if n in seen or n not in ups:
            continue
        seen.add(n)
        todo += [m for m in ups if n in ups[m]] if down else list(ups[n])
    return seen


def ancestors(graph: Graph, name: str) -> set[str]:
    """Every step upstream of ``name`` (not ``name`` itself, unless it lies on a cycle)."""
    return closure(graph, set(graph[name]) & set(graph))
