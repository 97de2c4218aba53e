"""Edits the cache key once missed (issue 27), one test each: make exactly one edit, compute the
keys again, and compare the steps whose key changed with the set spelled out by hand for the
pipeline used (not derived from the key code). ``step_keys`` is what a rerun looks its steps up
by, so a changed key is a recomputed step and an unchanged one is reused (the end-to-end runs of
``test_key_coverage.py`` show that).

The pipeline is a user's own project in a temporary directory, as in ``test_key_coverage.py``: a
model class (``Net``, in ``<pkg>.models.net``), a task module (``<pkg>.steps``, listed through a
task table module ``<pkg>.table`` named in ``SLIMRAY_TASKS``) and helper modules.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.machinery
import json
import os
import shutil
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from pipelines.config.compose import load_config
from pipelines.run import session
from pipelines.store import code, dists
from pipelines.store.keys import library_versions, step_keys

FILES = {
    "__init__.py": "",
    "models/__init__.py": "",
    "models/net.py": """
        import math

        from torch import nn


        class Net(nn.Module):
            def __init__(self, input_shape, num_classes, hidden: int = 4):
                super().__init__()
                n = math.prod(int(d) for d in input_shape)
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

            def forward(self, x):
                from {pkg}.layers import scale

                return scale(self.body(x))
        """,
    "layers.py": """
        def scale(x):
            from {pkg} import fast  # a compiled extension beside the module

            return x * fast.ONE
        """,
    "steps.py": """
        import importlib
        from dataclasses import dataclass

        import torch

        from tasks.core.context import StepContext
        from tasks.core.types import Value


        @dataclass
        class ConstConfig:
            value: float = 1.0


        def const(*, cfg: ConstConfig, ctx: StepContext) -> Value:
            from {pkg}.helpers import offset

            plugin = importlib.import_module("{pkg}.plugin")  # a literal module name
            return Value(torch.full((2,), cfg.value + offset() + plugin.BIAS), {{"from": ctx.step}})


        def const_two(*, cfg: ConstConfig, ctx: StepContext) -> Value:
            return Value(torch.full((2,), 2 * cfg.value), {{"from": ctx.step}})
        """,
    "table.py": """
        from {pkg}.steps import const

        TASKS = {{"{pkg}_const": const}}
        """,
    "helpers.py": """
        def offset():
            return 0.0
        """,
    "plugin.py": """
        BIAS = 0.0
        """,
}
SO = importlib.machinery.EXTENSION_SUFFIXES[0]  # fast.cpython-311-x86_64-linux-gnu.so here


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The user's package ``kce_<id>`` under tmp_path/src (importable), the working directory
    tmp_path, a private hash cache, and the npz data set ``d.npz``."""
    pkg = f"kce_{uuid.uuid4().hex[:8]}"
    src = tmp_path / "src" / pkg
    for name, text in FILES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(textwrap.dedent(text.format(pkg=pkg)).lstrip())
    (src / f"fast{SO}").write_bytes(b"\x7fELF compiled kernel v1")
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x_train=rng.normal(size=(64, 6)).astype("float32"),
        y_train=np.arange(64) % 2,
        x_test=rng.normal(size=(16, 6)).astype("float32"),
        y_test=np.arange(16) % 2,
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLIMRAY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SLIMRAY_TASKS", f"tests.toy_tasks,{pkg}.table")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.syspath_prepend(str(src.parent))
    importlib.invalidate_caches()
    yield pkg, src, tmp_path
    for name in [m for m in sys.modules if m.startswith(pkg)]:
        del sys.modules[name]


def pipeline(pkg: str, npz="d.npz", model: str | None = None) -> dict:
    optim = {"epochs": 1, "batch_size": 16}
    return {
        "name": "edits",
        "steps": {
            "data": {"task": "data", "params": {"source": "npz", "path": str(npz), "normalize": "none"}},
            "user": {
                "task": "train",
                "inputs": {"data": "data"},
                "params": {"model": {"_target_": model or f"{pkg}.models.net.Net", "hidden": 4}, "optim": optim},
            },
            "user_logits": {"task": "infer", "inputs": {"model": "user", "data": "data"}},
            "zoo": {
                "task": "train",
                "inputs": {"data": "data"},
                "params": {"model": {"_target_": "tasks.models.zoo.MLP", "hidden": [4]}, "optim": optim},
            },
            "const": {"task": f"{pkg}_const"},
        },
    }


@functools.cache
def _base_config():
    return load_config([])  # composed once: Hydra's compose is most of a key's time here


def keys(pipe: dict, versions: dict | None = None) -> dict[str, list[str]]:
    cfg = copy.deepcopy(_base_config())
    cfg.pipeline = OmegaConf.create(pipe)
    return step_keys(session.validate(cfg)[0], 0, versions)


def changed(a: dict, b: dict) -> set[str]:
    return {n for n in a if a[n] != b[n]}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def test_a_directory_param_without_a_separator_or_a_suffix_is_hashed(project):
    """``data.path=cifar-10-batches-py`` and a tokenizer folder ``my_tok``, relative to the working
    directory: neither has a ``/`` nor a file suffix."""
    _, _, tmp = project
    (tmp / "cifar-10-batches-py").mkdir()
    (tmp / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"batch one")
    (tmp / "my_tok").mkdir()
    (tmp / "my_tok" / "vocab").write_text("[PAD]\n[UNK]\nhello\n")
    pipe = {
        "name": "dirs",
        "steps": {
            "data": {"task": "data", "params": {"source": "cifar10", "path": "cifar-10-batches-py"}},
            "teacher": {"task": "train", "inputs": {"data": "data"}},
            "corpus": {"task": "text_corpus", "params": {"tokenizer": "my_tok"}},
            "other": {"task": "toy_source"},
        },
    }
    before = keys(pipe)
    (tmp / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"batch 1!!")
    after = keys(pipe)
    assert changed(before, after) == {"data", "teacher"}
    (tmp / "my_tok" / "vocab").write_text("[PAD]\n[UNK]\nworld\n")
    assert changed(after, keys(pipe)) == {"corpus"}


def test_files_under_a_symlinked_subdirectory_are_hashed(project):
    """A data folder whose ``shards`` is a link to another folder (and ``loop`` a link back to the
    folder itself, which must not hang the walk)."""
    _, _, tmp = project
    (tmp / "elsewhere").mkdir()
    (tmp / "elsewhere" / "part0").write_bytes(b"rows 0")
    (tmp / "folder").mkdir()
    (tmp / "folder" / "index").write_text("part0")
    (tmp / "folder" / "shards").symlink_to(tmp / "elsewhere", target_is_directory=True)
    (tmp / "folder" / "loop").symlink_to(tmp / "folder", target_is_directory=True)
    pipe = {
        "name": "links",
        "steps": {
            "data": {"task": "data", "params": {"source": "cifar10", "path": str(tmp / "folder")}},
            "teacher": {"task": "train", "inputs": {"data": "data"}},
            "other": {"task": "toy_source"},
        },
    }
    before = keys(pipe)
    (tmp / "elsewhere" / "part0").write_bytes(b"rows 1")
    assert changed(before, keys(pipe)) == {"data", "teacher"}


def test_a_param_naming_an_import_name_keys_its_distribution(project):
    """The text corpus reads the sources of the packages it names by import name; its default list
    (``conf/task/text_corpus/default.yaml``) has ``sklearn``, whose distribution is scikit-learn."""
    corpus = {"task": "text_corpus", "params": {"packages": ["numpy", "sklearn"]}}
    pipe = {"name": "corpus", "steps": {"corpus": corpus, "other": {"task": "toy_source"}}}
    versions = library_versions()
    assert "scikit-learn" in versions and "sklearn" not in versions
    base = keys(pipe, versions)
    assert changed(base, keys(pipe, {**versions, "scikit-learn": "0.0.1"})) == {"corpus"}


def test_a_literal_import_module_is_followed(project):
    pkg, src, _ = project
    pipe = pipeline(pkg)
    before = keys(pipe)
    edit(src / "plugin.py", "BIAS = 0.0", "BIAS = 1.0")
    assert changed(before, keys(pipe)) == {"const"}


def test_the_parent_init_of_a_user_package_is_hashed(project):
    pkg, src, _ = project
    pipe = pipeline(pkg)
    before = keys(pipe)
    edit(src / "models" / "__init__.py", "", "import os\n\nos.environ.setdefault('KCE_MODE', 'fast')\n")
    after = keys(pipe)
    assert changed(before, after) == {"user", "user_logits"}  # the steps that build or run Net
    edit(src / "__init__.py", "", "DEFAULT_SCALE = 2.0\n")
    assert changed(after, keys(pipe)) == {"user", "user_logits", "const"}  # every step of the package


def test_a_compiled_extension_beside_project_code_is_keyed(project):
    pkg, src, _ = project
    pipe = pipeline(pkg)
    before = keys(pipe)
    (src / f"fast{SO}").write_bytes(b"\x7fELF compiled kernel v2")  # rebuilt, same size
    assert changed(before, keys(pipe)) == {"user", "user_logits"}


def test_the_task_table_entry_is_keyed(project):
    """Re-pointing a task name to another function of an unchanged module: the table lives in its
    own module (``<pkg>.table``), so no source the step reaches changed."""
    pkg, src, _ = project
    pipe = pipeline(pkg)
    before = keys(pipe)
    edit(src / "table.py", "import const\n", "import const_two as const\n")
    importlib.reload(sys.modules[f"{pkg}.table"])  # a new process imports the edited table
    assert changed(before, keys(pipe)) == {"const"}


def _site_packages(tmp: Path, name: str, direct_url: dict | None, replace: bool = False) -> Path:
    """A package ``name`` (a model ``Net`` in ``name/net.py``) in a site-packages folder, with a
    distribution ``name`` 1.0 (installed the way ``direct_url`` says) or without one."""
    site = tmp / "venv" / "lib" / "site-packages"
    (site / name).mkdir(parents=True, exist_ok=replace)
    (site / name / "__init__.py").write_text("")
    (site / name / "net.py").write_text(textwrap.dedent(FILES["models/net.py"].format(pkg=name)).lstrip())
    (site / name / "layers.py").write_text("def scale(x):\n    return x * 1.0\n")
    if direct_url is not None:
        info = site / f"{name}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (info / "top_level.txt").write_text(f"{name}\n")
        (info / "RECORD").write_text(f"{name}/__init__.py,,\n{name}/net.py,,\n{name}/layers.py,,\n")
        if direct_url:
            (info / "direct_url.json").write_text(json.dumps(direct_url))
    return site


@pytest.fixture
def fresh_environment():
    """Forget this process's map of installed distributions before and after the test."""
    dists.environment.cache_clear()
    code.top_kind.cache_clear()
    yield
    dists.environment.cache_clear()
    code.top_kind.cache_clear()


@pytest.mark.parametrize(
    "direct_url",
    [{"url": "file:///home/me/mypkg", "dir_info": {}}, None],
    ids=["installed-from-a-local-directory", "no-distribution"],
)
def test_a_user_package_in_site_packages_is_hashed_by_content(project, monkeypatch, fresh_environment, direct_url):
    """``pip install ./mypkg`` (no ``-e``) puts the user's package in site-packages under a
    version that an edit and reinstall keeps; a package copied there has no distribution at all."""
    pkg, _, tmp = project
    name = f"{pkg}_inst"
    site = _site_packages(tmp, name, direct_url)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    pipe = pipeline(pkg, model=f"{name}.net.Net")
    before = keys(pipe)
    edit(site / name / "layers.py", "x * 1.0", "x * 2.0")  # reinstalled, same version
    assert changed(before, keys(pipe)) == {"user", "user_logits"}
    for mod in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[mod]


def test_a_wheel_reinstalled_under_the_same_version_is_another_key(project, monkeypatch, fresh_environment):
    """A library installed from a wheel file is keyed by its version and the wheel's hash (PEP 610
    ``direct_url.json``), so a rebuilt wheel of one version is a new key."""
    pkg, _, tmp = project
    name = f"{pkg}_whl"
    wheel = {"url": f"file:///wheels/{name}-1.0-py3-none-any.whl", "archive_info": {"hash": "sha256=" + "a" * 64}}
    site = _site_packages(tmp, name, wheel)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    pipe = pipeline(pkg, model=f"{name}.net.Net")
    before = keys(pipe)
    shutil.rmtree(site / f"{name}-1.0.dist-info")  # reinstalled from a rebuilt wheel of 1.0
    wheel["archive_info"] = {"hash": "sha256=" + "b" * 64}
    _site_packages(tmp, name, wheel, replace=True)
    dists.environment.cache_clear()  # as a new process after the reinstall reads it
    assert changed(before, keys(pipe)) == {"user", "user_logits"}
    for mod in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[mod]


def _keep_mtime(path: Path, write) -> None:
    """Change a file the way ``cp -p`` / ``tar -x`` do: other content, same size, old mtime."""
    st = path.stat()
    write()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_an_edit_that_keeps_mtime_and_size_is_another_key(project, monkeypatch):
    """Hashes (of data files and of code) must remember more than (path, mtime, size). The settle
    time is set to 0 so the first keys are remembered at once, as for files older than it."""
    monkeypatch.setattr(code, "SETTLE_NS", 0, raising=False)
    pkg, src, tmp = project
    pipe = pipeline(pkg)
    time.sleep(0.05)  # a later clock tick than the files' creation
    before = keys(pipe)
    assert keys(pipe) == before

    npz = tmp / "d.npz"
    data = dict(np.load(npz))
    data["y_train"] = data["y_train"][::-1].copy()
    _keep_mtime(npz, lambda: np.savez(npz, **data))  # in place, same inode: cp -p
    after = keys(pipe)
    assert changed(before, after) == {"data", "user", "user_logits", "zoo"}

    helpers = src / "helpers.py"
    text = helpers.read_text().replace("return 0.0", "return 0.5")
    tmp_copy = tmp / "helpers.py.extracted"
    _keep_mtime(helpers, lambda: (tmp_copy.write_text(text), tmp_copy.replace(helpers)))  # tar -x: new file
    assert changed(after, keys(pipe)) == {"const"}
