"""What code a step runs, for its cache key: the project modules it reaches and the installed
distributions whose code they call.

From a root module (the task's module, the module of a model ``_target_``) every ``import`` and
``from ... import`` statement anywhere in the file is followed: at the top, inside functions,
under ``try`` or ``if`` (an AST walk, not the module's globals, so a lazy import inside a function
counts), and so is ``importlib.import_module("a.literal")`` / ``__import__("a.literal")`` (a
computed name cannot be seen). An imported module is one of three kinds, by where it lives:

- the standard library (``sys.stdlib_module_names``): covered by the Python version in the key;
- a library: its top-level package lies in ``site-packages``/``dist-packages`` and comes from a
  distribution installed from an index, a wheel or sdist, or a VCS; that distribution
  (``importlib.metadata.packages_distributions``) and every distribution it requires
  (``Requires-Dist`` without extras, transitively: ``transformers`` brings ``tokenizers``) go into
  the key by version (plus the archive hash or commit that ``direct_url.json`` records, so a
  rebuilt wheel of one version is another key);
- project code: anything else (``tasks``, your package, a module beside your model file, and also
  code in ``site-packages`` that no distribution provides or whose distribution was installed
  from a local directory, ``pip install ./mypkg`` with or without ``-e``): its source is hashed
  and its imports are followed in turn. A compiled extension of project code (``fast.*.so`` or
  ``.pyd`` beside a module) is hashed by its bytes.

A project module's parent packages run on import, so their ``__init__.py`` are followed too, except
``tasks/__init__.py``: it is the task table and imports every step, and a step must not depend on
the others (the key holds its own table entry instead, ``pipelines.store.keys``).

Costs are paid once: a file is parsed (or an extension hashed) once per (path, mtime, size, inode,
ctime) per process and remembered in ``<SLIMRAY_CACHE_DIR>/code-index.json`` (a file changed less
than ``SETTLE_NS`` ago is parsed again next time: its stamp could still change within one clock
tick); the map of import names to distributions, their versions and requirements is read once per
process, or from ``<SLIMRAY_CACHE_DIR>/environment.json`` while no ``sys.path`` directory has
changed (an install or an uninstall changes its directory's mtime).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import importlib.metadata as md
import importlib.util
import json
import os
import re
import sys
import sysconfig
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

LIBRARY_DIRS = ("site-packages", "dist-packages")
OWN = ("tasks", "pipelines")  # slimray's packages: project code wherever they are installed
TASK_TABLE = "tasks"  # the package whose ``__init__`` is the task table: keyed by entry, not followed
ENV_FORMAT = 2  # of environment.json: a stored map of another format is read again
INDEX_FORMAT = 2  # of code-index.json: entries of another format are not read
SETTLE_NS = 1_000_000_000  # a file changed more recently than this is not remembered (racy stamps)
DYNAMIC = {"import_module", "__import__"}  # calls whose literal first argument names a module


@dataclass(frozen=True)
class Parsed:
    sha: str
    imports: tuple[tuple[int, str, tuple[str, ...]], ...]  # (level, module, imported names)


_PARSED: dict[str, Parsed] = {}  # stamp(path) -> Parsed, in memory and in code-index.json
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


def stamp(path: Path | str, st: os.stat_result | None = None) -> str:
    """What identifies one version of a file without reading it: path, mtime, size, inode and
    ctime (ns). ``cp -p`` and ``tar -x`` restore mtime and size but not ctime (``tar`` also makes a
    new inode), so an edit that keeps both is still a new stamp."""
    st = st or os.stat(path)
    return f"{path}|{st.st_mtime_ns}|{st.st_size}|{st.st_ino}|{st.st_ctime_ns}"


def settled(st: os.stat_result) -> bool:
    """Whether a file's stamp can be trusted to change on its next edit: its last change is older
    than ``SETTLE_NS`` (within one timestamp tick, a second same-size edit keeps the stamp)."""
    return time.time_ns() - st.st_ctime_ns > SETTLE_NS


def _dynamic_import(node: ast.Call) -> str | None:
    """The literal module name of ``importlib.import_module("x")`` / ``import_module("x")`` /
    ``__import__("x")``, else None."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in DYNAMIC or not node.args:
        return None
    arg = node.args[0]
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value else None


def _imports(src: bytes, path: Path) -> tuple[tuple[int, str, tuple[str, ...]], ...]:
    """Every import statement, and every call importing a literal name, of a Python source."""
    found: list[tuple[int, str, tuple[str, ...]]] = []
    for node in ast.walk(ast.parse(src, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(0, a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Call) and (name := _dynamic_import(node)):
            module = name.lstrip(".")  # import_module(".x", package=__package__) is relative
            found.append((len(name) - len(module), module, ()))
    return tuple(found)


def _load_index() -> None:
    _LOADED.append(True)
    try:
        stored = json.loads((_cache_dir() / "code-index.json").read_text())
        if stored["format"] != INDEX_FORMAT:
            return
        _PARSED.update(
            {k: Parsed(v[0], tuple((i[0], i[1], tuple(i[2])) for i in v[1])) for k, v in stored["files"].items()}
        )
    except (OSError, ValueError, TypeError, IndexError, KeyError, AttributeError):
        pass


def parse(path: Path) -> Parsed:
    """The content hash and every import of a project file: a Python source's import statements,
    none for a compiled extension (memoized by ``stamp``)."""
    if not _LOADED:
        _load_index()
    st = path.stat()
    memo = stamp(path, st)
    hit = _PARSED.get(memo)
    if hit is None:
        src = path.read_bytes()
        imports = _imports(src, path) if path.suffix == ".py" else ()
        hit = Parsed(hashlib.sha256(src).hexdigest(), imports)
        if settled(st):
            _PARSED[memo] = hit
            _NEW.append(True)
    return hit


def save() -> None:
    """Write the parsed files to ``<SLIMRAY_CACHE_DIR>/code-index.json`` if any was new."""
    if _NEW:
        _NEW.clear()
        files = {k: [v.sha, v.imports] for k, v in _PARSED.items() if _current(k)}
        _write(_cache_dir() / "code-index.json", {"format": INDEX_FORMAT, "files": files})


def _current(memo: str) -> bool:
    """Whether a ``stamp`` still describes its file (stale entries are dropped)."""
    path = memo.rsplit("|", 4)[0]
    try:
        return stamp(path) == memo
    except OSError:
        return False


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
    library = name not in OWN and all(_is_library_path(p) for p in locs) and _third_party(name)
    return ("library" if library else "project"), locs


def _third_party(name: str) -> bool:
    """Whether a top-level import name comes from a distribution installed from an index, an
    archive or a VCS (keyed by version); code no distribution provides, or one installed from a
    local directory (the user's own package, ``pip install .``), is hashed like project code."""
    env = environment()
    return any(d not in env["local"] for d in env["tops"].get(name, ()))


def _listing(folder: str, listings: dict[str, frozenset[str]]) -> frozenset[str]:
    """The names in a directory (empty if it is none), listed once per ``listings``."""
    hit = listings.get(folder)
    if hit is None:
        try:
            hit = frozenset(os.listdir(folder))
        except OSError:
            hit = frozenset()
        listings[folder] = hit
    return hit


def module_file(name: str, listings: dict[str, frozenset[str]] | None = None) -> Path | None:
    """The file of a project module (``pkg/__init__.py`` for a package, ``mod.py``, or a compiled
    extension ``mod.cpython-311-x86_64-linux-gnu.so`` / ``mod.pyd``), else None. ``listings``
    remembers the directories read (one ``reach``: a key is computed from one moment's files)."""
    listings = {} if listings is None else listings
    top, *rest = name.split(".")
    kind, locs = top_kind(top)
    if kind != "project":
        return None
    suffixes = (".py", *importlib.machinery.EXTENSION_SUFFIXES)
    for loc in locs:
        folder, leaf = os.path.split(loc)
        if loc.endswith(suffixes) and leaf in _listing(folder, listings):  # a top-level module file
            return Path(loc) if not rest else None
        folder = os.path.join(loc, *rest[:-1])
        leaf = rest[-1] if rest else ""
        if not leaf or leaf in _listing(folder, listings):  # a package
            package = os.path.join(folder, leaf) if leaf else folder
            if "__init__.py" in _listing(package, listings):
                return Path(package, "__init__.py")
        names = _listing(folder, listings) if leaf else frozenset()
        for suffix in suffixes:
            if leaf + suffix in names:
                return Path(folder, leaf + suffix)
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
    listings: dict[str, frozenset[str]] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in code:
            continue
        kind = top_kind(name.split(".")[0])[0]
        if kind in ("library", "missing"):
            libraries.add(name.split(".")[0])
            continue
        path = module_file(name, listings) if kind == "project" else None
        if path is None:
            continue
        parsed = parse(path)
        code[name] = parsed.sha
        todo += _parents(name)
        for level, mod, names in parsed.imports:
            base = _absolute(name, path, level, mod)
            todo.append(base)
            todo += [f"{base}.{n}" for n in names if n != "*" and module_file(f"{base}.{n}", listings) is not None]
    return dict(sorted(code.items())), sorted(libraries)


def _parents(name: str) -> list[str]:
    """The parent packages of a module (Python runs their ``__init__`` on import), except the task
    table's package."""
    parts = name.split(".")
    parents = [".".join(parts[:i]) for i in range(1, len(parts))]
    return [p for p in parents if p != TASK_TABLE]


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
    path, stamp = _cache_dir() / "environment.json", [ENV_FORMAT, sys.prefix, sys.version, _stamp()]
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


def providers(import_name: str) -> list[str]:
    """The distributions that provide a top-level import name (``sklearn`` -> ``scikit-learn``);
    a string param may name one (the packages a text corpus reads)."""
    return list(environment()["tops"].get(import_name, ()))
