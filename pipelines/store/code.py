"""What code a step runs, for its cache key: the project modules it reaches and the installed
distributions whose code they call.

From a root module (the task's module, the module of a model ``_target_``) every ``import`` and
``from ... import`` statement anywhere in the file is followed: at the top, inside functions,
under ``try`` or ``if`` (an AST walk, not the module's globals, so a lazy import inside a function
counts). An imported module is one of three kinds, by where it lives:

- the standard library (``sys.stdlib_module_names``): covered by the Python version in the key;
- a library: its top-level package lies in ``site-packages``/``dist-packages``; its distribution
  (``importlib.metadata.packages_distributions``) and every distribution that one requires
  (``Requires-Dist`` without extras, transitively: ``transformers`` brings ``tokenizers``) go into
  the key by version;
- project code: anything else (``tasks``, your package, a module beside your model file), whose
  source is hashed and whose imports are followed in turn.

Only the modules an import statement names are followed (and ``pkg.name`` when ``from pkg import
name`` names a submodule), not every parent package's ``__init__``: ``tasks/__init__.py`` imports
every step, and a step must not depend on the others. Dynamic imports (``importlib.import_module``
of a computed name) are not seen; model ``_target_`` modules are added as roots by the caller.

Costs are paid once: a file is parsed once per (path, mtime, size) per process; the map of
import names to distributions, their versions and requirements is read once per process, or from
``<SLIMRAY_CACHE_DIR>/environment.json`` while no ``sys.path`` directory has changed (an install
or an uninstall changes its directory's mtime).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

LIBRARY_DIRS = ("site-packages", "dist-packages")
OWN = ("tasks", "pipelines")  # slimray's packages: project code wherever they are installed


@dataclass(frozen=True)
class Parsed:
    sha: str
    imports: tuple[tuple[int, str, tuple[str, ...]], ...]  # (level, module, imported names)


_PARSED: dict[str, Parsed] = {}  # "path|mtime_ns|size" -> Parsed, in memory and in code-index.json
_LOADED: list[bool] = []  # whether code-index.json was read in this process
_NEW: list[bool] = []  # whether a file was parsed since


def _cache_dir() -> Path:
    return Path(os.environ.get("SLIMRAY_CACHE_DIR") or Path.home() / ".cache" / "slimray")


def _write(path: Path, obj) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(obj))
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    except OSError:
        pass  # a read-only home: computed again next time, keys are unaffected


def parse(path: Path) -> Parsed:
    """The source hash and every import statement of a Python file (memoized by path, mtime, size)."""
    if not _LOADED:
        _LOADED.append(True)
        try:
            stored = json.loads((_cache_dir() / "code-index.json").read_text())
            _PARSED.update({k: Parsed(v[0], tuple((i[0], i[1], tuple(i[2])) for i in v[1])) for k, v in stored.items()})
        except (OSError, ValueError, TypeError, IndexError):
            pass
    st = path.stat()
    memo = f"{path}|{st.st_mtime_ns}|{st.st_size}"
    hit = _PARSED.get(memo)
    if hit is None:
        src = path.read_bytes()
        found: list[tuple[int, str, tuple[str, ...]]] = []
        for node in ast.walk(ast.parse(src, filename=str(path))):
            if isinstance(node, ast.Import):
                found += [(0, a.name, ()) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                found.append((node.level, node.module or "", tuple(a.name for a in node.names)))
        hit = _PARSED[memo] = Parsed(hashlib.sha256(src).hexdigest(), tuple(found))
        _NEW.append(True)
    return hit


def save() -> None:
    """Write the parsed files to ``<SLIMRAY_CACHE_DIR>/code-index.json`` if any was new."""
    if _NEW:
        _NEW.clear()
        _write(_cache_dir() / "code-index.json", {k: [v.sha, v.imports] for k, v in _PARSED.items() if _current(k)})


def _current(memo: str) -> bool:
    """Whether a ``path|mtime|size`` entry still describes its file (stale entries are dropped)."""
    path, mtime, size = memo.rsplit("|", 2)
    try:
        st = os.stat(path)
    except OSError:
        return False
    return f"{st.st_mtime_ns}|{st.st_size}" == f"{mtime}|{size}"


def _is_library_path(path: str) -> bool:
    parts = Path(path).parts
    if any(p in LIBRARY_DIRS for p in parts):
        return True
    stdlib = [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")]
    return any(path.startswith(s + os.sep) for s in stdlib)


@cache
def top_kind(name: str) -> tuple[str, tuple[str, ...]]:
    """``(kind, locations)`` of a top-level module: ``stdlib``, ``library``, ``project`` or ``missing``;
    locations are a package's directories or a module's file (found without importing it)."""
    if name in sys.stdlib_module_names or name in sys.builtin_module_names:
        return "stdlib", ()
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return "missing", ()
    locs = tuple(spec.submodule_search_locations or ()) or ((spec.origin,) if spec.origin else ())
    if not locs or spec.origin in ("built-in", "frozen"):
        return "stdlib", ()
    library = name not in OWN and all(_is_library_path(p) for p in locs)
    return ("library" if library else "project"), locs


def module_file(name: str) -> Path | None:
    """The source file of a project module (``pkg/__init__.py`` for a package), else None."""
    top, *rest = name.split(".")
    kind, locs = top_kind(top)
    if kind != "project":
        return None
    for loc in locs:
        base = Path(loc)
        if base.is_file():  # a top-level module file: no submodules
            return base if not rest and base.suffix == ".py" else None
        target = base.joinpath(*rest)
        for candidate in (target / "__init__.py", target.with_name(target.name + ".py")):
            if candidate.is_file():
                return candidate
    return None


def _absolute(module: str, path: Path, level: int, name: str) -> str:
    if not level:
        return name
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    parts = package.split(".")
    base = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join([*base, name] if name else base)


def reach(roots: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """``({project module: source sha256}, sorted top-level names of the libraries imported)``
    of everything reachable from ``roots`` through import statements."""
    code: dict[str, str] = {}
    libraries: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in code:
            continue
        kind = top_kind(name.split(".")[0])[0]
        if kind in ("library", "missing"):
            libraries.add(name.split(".")[0])
            continue
        path = module_file(name) if kind == "project" else None
        if path is None:
            continue
        parsed = parse(path)
        code[name] = parsed.sha
        for level, mod, names in parsed.imports:
            base = _absolute(name, path, level, mod)
            todo.append(base)
            todo += [f"{base}.{n}" for n in names if n != "*" and module_file(f"{base}.{n}") is not None]
    return dict(sorted(code.items())), sorted(libraries)


# ---- the installed distributions -------------------------------------------------------------


def _stamp() -> list:
    """What changes when a distribution is installed or removed: the mtimes of sys.path's library
    directories (where installs write their ``.dist-info``)."""
    out = []
    for p in sys.path:
        if not p or not _is_library_path(p + os.sep):
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


def _read_environment() -> dict:
    versions: dict[str, str] = {}
    requires: dict[str, list[str]] = {}
    for dist in md.distributions():
        name = norm(dist.metadata["Name"] or "")
        if name and name not in versions:
            versions[name] = dist.version
            requires[name] = [norm(r) for r in _requires(dist)]
    tops = {top: sorted({norm(d) for d in dists}) for top, dists in md.packages_distributions().items()}
    return {"versions": versions, "requires": requires, "tops": tops}


@cache
def environment() -> dict:
    """``{"versions": {dist: version}, "requires": {dist: [dist]}, "tops": {import name: [dist]}}``."""
    path, stamp = _cache_dir() / "environment.json", [sys.prefix, sys.version, _stamp()]
    try:
        stored = json.loads(path.read_text())
        if stored.get("stamp") == stamp:
            return stored["environment"]
    except (OSError, ValueError, AttributeError):
        pass
    env = _read_environment()
    _write(path, {"stamp": stamp, "environment": env})
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
