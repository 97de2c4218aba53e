"""The labels of the user's text files, as names or integer ids, numbered one way for every split.

With the model's ``id2label``, names are mapped through it and ids must be its ids. Without it a
``ClassLabel`` column keeps its names and ids, other names are sorted (numbers in numeric order)
and numbered, and integer ids must already be ``0..K-1``. A refusal names the file and the labels
at fault, so the user can fix the file or pick the right model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tasks.core.checks import BadValue
from tasks.datasets.text_splits import DataFileError, TextSplit

_SHOW = 5  # labels / columns named in one error line


@dataclass
class FileRows:
    """One file's rows as read and checked, labels still as the file holds them."""

    source: str
    split: TextSplit
    raw_labels: list[str | int] | None
    class_names: list[str] | None  # a ClassLabel column's names (ids already turned into names)


def _few(values: list[Any]) -> str:
    """At most ``_SHOW`` values for an error line, and how many more there are."""
    shown = ", ".join(repr(v) for v in values[:_SHOW])
    return f"[{shown}{f', ... {len(values) - _SHOW} more' if len(values) > _SHOW else ''}]"


def raw_labels(
    values: list[Any], rows: list[int], source: str, column: str, class_names: list[str] | None
) -> list[str | int]:
    """The labels as names (str) or ids (int); missing values and other types are refused."""
    missing = [r for r, v in zip(rows, values) if v is None or (class_names is not None and v == -1)]
    if missing:
        raise DataFileError(
            f"{source}: column '{column}' has {len(missing)} missing label(s) (first at row {missing[0] + 1})"
        )
    if class_names is not None:
        return [class_names[v] for v in values]
    out: list[str | int] = []
    for r, v in zip(rows, values):
        if isinstance(v, bool):  # a CSV's True / False column: two names
            v = str(v)
        elif isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, (str, int)):
            raise DataFileError(
                f"{source}: row {r + 1}: label {v!r} ({type(v).__name__}) in column '{column}' is neither a "
                f"name nor an integer id"
            )
        out.append(v)
    if len({type(v) for v in out}) > 1:
        raise DataFileError(f"{source}: column '{column}' mixes label names and integer ids")
    return out


def label_ids(
    parts: dict[str, FileRows], id2label: dict[int, str] | None, label_column: str
) -> tuple[dict[str, list[int]], list[str]]:
    """Each split's label ids and the label names (index = id)."""
    known_as = "the model's labels"
    if id2label is None:
        named = [r for r in parts.values() if r.class_names is not None]
        if named:
            first = named[0]
            for other in named[1:]:
                if other.class_names != first.class_names:
                    raise DataFileError(
                        f"{other.source}: ClassLabel names {_few(other.class_names or [])} differ from "
                        f"{first.source}'s {_few(first.class_names or [])}"
                    )
            id2label, known_as = dict(enumerate(first.class_names or [])), f"the class names of {first.source}"
    if id2label is not None:
        return _through(parts, id2label, known_as)
    kinds = {name: type(r.raw_labels[0]) for name, r in parts.items() if r.raw_labels}
    if len(set(kinds.values())) > 1:
        by = ", ".join(f"{parts[n].source} has {'names' if k is str else 'integer ids'}" for n, k in kinds.items())
        raise DataFileError(f"label column '{label_column}': files disagree ({by})")
    found = {v for r in parts.values() for v in r.raw_labels or []}
    if set(kinds.values()) == {int}:
        ints = sorted(int(v) for v in found)
        if ints != list(range(len(ints))):
            files = ", ".join(r.source for r in parts.values())
            raise DataFileError(
                f"{files}: integer labels {_few(ints)} are not the ids 0..K-1 of K classes{_gaps(ints)}; "
                f"give ids 0..K-1 or label names"
            )
        return {n: [int(v) for v in r.raw_labels or []] for n, r in parts.items()}, [str(i) for i in ints]
    names = sorted((str(v) for v in found), key=_natural)
    ids = {v: i for i, v in enumerate(names)}
    return {n: [ids[str(v)] for v in r.raw_labels or []] for n, r in parts.items()}, names


def _natural(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if re.fullmatch(r"\d+", name) else (1, name)


def _gaps(ints: list[int]) -> str:
    """The first ids missing below the largest (a stray huge id stops the search early)."""
    have, missing = set(ints), []
    for i in range(max(ints)):
        if i not in have:
            missing.append(i)
            if len(missing) > _SHOW:
                break
    return f" (missing {_few(missing)})" if missing else ""


def _through(
    parts: dict[str, FileRows], id2label: dict[int, str], known_as: str
) -> tuple[dict[str, list[int]], list[str]]:
    """Labels mapped through ``id2label`` (names by name, ids by id); unknown ones refused by file."""
    try:
        table = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise BadValue("id2label", f"keys must be integer ids, got {_few(list(id2label))}") from None
    if sorted(table) != list(range(len(table))):
        raise BadValue("id2label", f"ids {_few(sorted(table))} are not 0..K-1")
    by_name: dict[str, int] = {}
    for i in sorted(table):
        by_name.setdefault(table[i], i)
    out = {}
    for name, r in parts.items():
        raw = r.raw_labels or []
        ids = [by_name.get(v, -1) if isinstance(v, str) else (v if v in table else -1) for v in raw]
        unknown = sorted({v for v, i in zip(raw, ids) if i < 0}, key=lambda v: _natural(str(v)))
        if unknown:
            raise DataFileError(
                f"{r.source}: label(s) {_few(unknown)} not in {known_as} {_few([table[i] for i in sorted(table)])}"
            )
        out[name] = ids
    return out, [table[i] for i in range(len(table))]
