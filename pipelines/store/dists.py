"""The installed distributions, for cache keys: their versions (with where each was installed from),
what each always requires, which top-level import names each provides, and which were installed
from a local directory (the user's own code: hashed by ``pipelines.store.code``, not versioned).

Read once per process, or from ``<SLIMRAY_CACHE_DIR>/environment.json`` while no ``sys.path``
library directory has changed (an install or an uninstall changes its directory's mtime).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterable
from functools import cache
from pathlib import Path

LIBRARY_DIRS = ("site-packages", "dist-packages")
ENV_FORMAT = 2  # of environment.json: a stored map of another format is read again


def cache_dir() -> Path:
    """Where the key's memos live: ``SLIMRAY_CACHE_DIR``, else ``~/.cache/slimray``."""
    return Path(os.environ.get("SLIMRAY_CACHE_DIR") or Path.home() / ".cache" / "slimray")


def write_json(path: Path, obj) -> None:
    """Write a memo atomically; a read-only home is no error (the memo is computed again)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(obj))
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    except OSError:
        pass  # a read-only home: computed again next time, keys are unaffected


def is_library_path(path: str) -> bool:
    """Whether a path lies in a ``site-packages``/``dist-packages`` folder or the standard library."""
    parts = Path(path).parts
    if any(p in LIBRARY_DIRS for p in parts):
        return True
    stdlib = [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")]
    return any(path.startswith(s + os.sep) for s in stdlib)


def _stamp() -> list:
    """What changes when a distribution is installed or removed: the mtimes of sys.path's library
    directories (where installs write their ``.dist-info``)."""
    out = []
    for p in sys.path:
        if not p or not is_library_path(p + os.sep):
            continue
        try:
            out.append([p, os.stat(p).st_mtime_ns])
        except OSError:
            continue
    return out


def _requires(dist: md.Distribution) -> list[str]:
    """The distributions ``dist`` always requires (requirements under an ``extra`` marker are not)."""
    from packaging.requirements import InvalidRequirement, Requirement

    out = []
    for text in dist.requires or []:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req.name)
    return out


def norm(name: str) -> str:
    """A distribution's normalized name (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _origin(dist: md.Distribution) -> str | None:
    """Where a distribution was installed from (PEP 610 ``direct_url.json``): ``"local"`` for a
    local directory (``pip install ./mypkg``, with or without ``-e``), the archive's hash or the
    VCS commit when recorded, ``""`` otherwise (an index), None when unreadable."""
    try:
        info = json.loads(dist.read_text("direct_url.json") or "{}")
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    if "dir_info" in info:
        return "local"
    for section, field in (("archive_info", "hash"), ("vcs_info", "commit_id")):
        value = info[section].get(field) if isinstance(info.get(section), dict) else None
        if isinstance(value, str) and value:
            return value
    return ""


def _read_environment() -> dict:
    versions: dict[str, str] = {}
    requires: dict[str, list[str]] = {}
    local: list[str] = []
    for dist in md.distributions():
        name = norm(dist.metadata["Name"] or "")
        if name and name not in versions:
            origin = _origin(dist)
            local += [name] if origin == "local" else []
            versions[name] = f"{dist.version} ({origin})" if origin and origin != "local" else dist.version
            requires[name] = [norm(r) for r in _requires(dist)]
    tops = {top: sorted({norm(d) for d in dists}) for top, dists in md.packages_distributions().items()}
    return {"versions": versions, "requires": requires, "tops": tops, "local": sorted(local)}


@cache
def environment() -> dict:
    """``{"versions": {dist: version}, "requires": {dist: [dist]}, "tops": {import name: [dist]},
    "local": [dists installed from a local directory]}``; a version carries the archive hash or
    VCS commit the install recorded (``"1.0 (sha256=...)"``)."""
    path, stamp = cache_dir() / "environment.json", [ENV_FORMAT, sys.prefix, sys.version, _stamp()]
    try:
        stored = json.loads(path.read_text())
        if stored.get("stamp") == stamp:
            return stored["environment"]
    except (OSError, ValueError, AttributeError):
        pass
    env = _read_environment()
    write_json(path, {"stamp": stamp, "environment": env})
    return env


def distributions(import_names: Iterable[str]) -> list[str]:
    """The distributions that provide ``import_names``, with everything they require (transitively);
    an import name no distribution provides stays as ``import:<name>`` (its version: absent)."""
    env = environment()
    todo: list[str] = []
    for name in import_names:
        todo += env["tops"].get(name) or [f"import:{name}"]
    seen: set[str] = set()
    while todo:
        dist = todo.pop()
        if dist not in seen:
            seen.add(dist)
            todo += env["requires"].get(dist, [])
    return sorted(seen)


def installed(name: str) -> bool:
    """Whether ``name`` is an installed distribution (a string param may name one: a model package)."""
    return norm(name) in environment()["versions"]


def providers(import_name: str) -> list[str]:
    """The distributions that provide a top-level import name (``sklearn`` -> ``scikit-learn``);
    a string param may name one (the packages a text corpus reads)."""
    return list(environment()["tops"].get(import_name, ()))
