"""The floors of the house stay honest: the import graph of ``pipelines/`` and ``tasks/`` has no
cycles and ``tasks`` never imports ``pipelines``; the rooms keep their size limits; and the
light paths (``slimray --help``, composing and validating a config) do not import the heavy
libraries a step needs (torch-pruning, ONNX Runtime, ONNX, transformers, matplotlib).

The graph is read from the source with ``ast``: every ``import`` statement, at module level and
inside functions (``if TYPE_CHECKING:`` blocks excepted: they never run). ``from x import y``
is an edge to ``x.y`` when that is a module, else to ``x``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "tasks")
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60
MAX_TOP_LEVEL = {"pipelines": 6, "tasks": 3}
HEAVY = ("torch_pruning", "onnxruntime", "onnx", "onnxscript", "transformers", "matplotlib")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the two packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path a -> b -> ... -> a) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(graph, comp) for comp in components]


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the component's first member (breadth-first)."""
    start = min(comp)
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & comp):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                todo.append(w)
    raise AssertionError(f"no cycle in {comp}")


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_tasks_never_import_pipelines():
    upward = sorted(
        f"{m} imports {t}"
        for m, targets in import_graph().items()
        if m.split(".")[0] == "tasks"
        for t in targets
        if t.split(".")[0] == "pipelines"
    )
    assert not upward, "tasks import the engine:\n" + "\n".join(upward)


def test_a_step_never_imports_another_step():
    """Steps are recipes: what two steps share lives in the library rooms of tasks/."""
    graph = import_graph()
    crossing = sorted(
        f"{m} imports {t}"
        for m, targets in graph.items()
        if m.startswith("tasks.steps.")
        for t in targets
        if t.startswith("tasks.steps.")
    )
    assert not crossing, "steps import steps:\n" + "\n".join(crossing)
    libraries = sorted(
        f"{m} imports {t}"
        for m, targets in graph.items()
        if m.startswith("tasks.") and not m.startswith("tasks.steps") and m != "tasks"
        for t in targets
        if t.startswith("tasks.steps")
    )
    assert not libraries, "libraries import steps:\n" + "\n".join(libraries)


def test_only_the_entry_point_imports_the_command_line():
    graph = import_graph()
    importers = sorted(m for m, targets in graph.items() if "pipelines.cli" in targets)
    assert importers == ["pipelines.__main__"], importers


def test_the_graph_reader_sees_function_local_and_from_imports():
    graph = import_graph()
    assert "pipelines.api" in graph["pipelines.cli"]  # `from pipelines import api`: a module
    assert "pipelines.config.compose" in graph["pipelines.api"]  # a module-level from-import of names
    assert "pipelines.run.multirun" in graph["pipelines.api"]  # `from pipelines.run import multirun` in a function
    assert "pipelines.scale.submit" in graph["pipelines.api"]  # `from pipelines.scale.submit import main` there
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_top_level_module_counts():
    over = []
    for pkg, limit in MAX_TOP_LEVEL.items():
        files = sorted(p.name for p in (REPO / pkg).glob("*.py"))
        if len(files) > limit:
            over.append(f"{pkg}/: {len(files)} top-level modules > {limit}: {files}")
    assert not over, "\n".join(over)


def test_module_and_function_sizes():
    over = []
    for path in module_files().values():
        text = path.read_text()
        rel = path.relative_to(REPO)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            over.append(f"{rel}: {len(text.splitlines())} lines > {MAX_MODULE_LINES}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    over.append(f"{rel}:{node.lineno} {node.name}: {n} lines > {MAX_FUNCTION_LINES}")
    assert not over, f"{len(over)} over the size limits:\n" + "\n".join(over)


def _modules_after(code: str, tmp_path: Path) -> set[str]:
    """The heavy modules in ``sys.modules`` after ``code`` runs in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    return {m.split(".")[0] for m in loaded if m.split(".")[0] in HEAVY}


def test_help_imports_no_heavy_library(tmp_path):
    code = "from pipelines.cli import main\nassert main(['--help']) == 0"
    assert _modules_after(code, tmp_path) == set()


def test_validating_the_default_config_imports_no_heavy_library(tmp_path):
    code = (
        "from pipelines.config.compose import load_config\n"
        "from pipelines.run.session import validate\n"
        "validate(load_config([]))"
    )
    assert _modules_after(code, tmp_path) == set()
