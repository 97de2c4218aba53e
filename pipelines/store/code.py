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
process, or from ``<SLIMRAY_CACHE_DIR>/environment.json`` (``pipelines.store.dists``).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pipelines.store.dists import cache_dir, environment, is_library_path, write_json

OWN = ("tasks", "pipelines")  # slimray's packages: project code wherever they are installed
TASK_TABLE = "tasks"  # the package whose ``__init__`` is the task table: keyed by entry, not followed
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
        stored = json.loads((cache_dir() / "code-index.json").read_text())
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
        write_json(cache_dir() / "code-index.json", {"format": INDEX_FORMAT, "files": files})


def _current(memo: str) -> bool:
    """Whether a ``stamp`` still describes its file (stale entries are dropped)."""
    path = memo.rsplit("|", 4)[0]
    try:
        return stamp(path) == memo
    except OSError:
        return False


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
    library = name not in OWN and all(is_library_path(p) for p in locs) and _third_party(name)
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
