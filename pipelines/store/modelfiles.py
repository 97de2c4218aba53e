"""A logged model's signed file list: the sha256 of every file of the logged model (``MLmodel``,
``model.onnx``, ``extra_files/`` with ``serving.json`` and a tokenizer, the environment files),
taken when the model is logged and signed with the cache key (``pipelines.store.signing``) for
that logged model's id. It is recorded as ``FILES_TAG`` on the registered version and on its
logged model (``pipelines.store.recorder``). A cached run registers an existing logged model
again only when every file matches it, and ``slimray serve`` refuses a version whose files do not
(``check_files``). Kept apart from ``pipelines.store.registry`` so that checking a model's files
needs neither MLflow's client nor ONNX.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipelines.store import signing
from tasks.core.publication import Registration

FILES_TAG = "slimray.files"  # signed JSON {"files": {path: sha256}, "signature"}: a logged model's files
DOWNLOAD_ONLY = frozenset({"registered_model_meta"})  # MLflow writes it into every models:/ download


class ModelFilesError(ValueError):
    """A registered model whose files do not match its signed file list; one line."""


def files_of(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (a downloaded logged model) -> its sha256, by relative path;
    MLflow's own ``registered_model_meta`` (written by the download, not stored) left out."""
    files = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and name not in DOWNLOAD_ONLY:
            files[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def files_context(model_id: str) -> str:
    """What a file list's signature is bound to: the logged model it lists."""
    return f"logged-model/{model_id}/files"


def signed_files(files: dict[str, str], model_id: str) -> str:
    """The ``FILES_TAG`` value: the file list and its signature for ``model_id``."""
    signature = signing.sign(files, files_context(model_id))
    return json.dumps({"files": files, "signature": signature}, sort_keys=True, separators=(",", ":"))


def read_files(recorded: str | None, model_id: str, where: str) -> dict[str, str]:
    """The file list of a ``FILES_TAG`` value once its signature verifies for ``model_id``; a
    ``ModelFilesError`` when it is missing, malformed or not signed with this key for it."""
    if not recorded:
        raise ModelFilesError(f"{where}: no signed file list (tag {FILES_TAG})")
    try:
        body = json.loads(recorded)
        files, signature = body["files"], body["signature"]
        ok = isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ModelFilesError(f"{where}: tag {FILES_TAG} is malformed")
    plain = isinstance(signature, str) and signature.isascii()  # hmac refuses non-ASCII text
    if not (plain and signing.valid(files, files_context(model_id), signature)):
        raise ModelFilesError(f"{where}: tag {FILES_TAG} does not verify with the cache key ({signing.key_path()})")
    return files


def check_files(folder: Path, recorded: str | None, model_id: str, where: str) -> None:
    """Every file of the downloaded model ``folder`` is in the signed list ``recorded`` with its
    sha256, and every listed file is there; else a one-line ``ModelFilesError`` naming the file."""
    want, got = read_files(recorded, model_id, where), files_of(folder)
    for name in sorted(set(want) | set(got)):
        if name not in got:
            raise ModelFilesError(f"{where}: {name} is missing (listed in the signed tag {FILES_TAG})")
        if name not in want:
            raise ModelFilesError(f"{where}: {name} is not in the signed file list (tag {FILES_TAG})")
        if got[name] != want[name]:
            raise ModelFilesError(f"{where}: {name} differs from the signed file list (tag {FILES_TAG})")


def differs(files: dict[str, str], reg: Registration) -> str:
    """The first file of a logged model's list that is not the registration's: its graph
    (``model.onnx``) and the files beside it (``extra_files/``, none more), or for a files-only
    registration its files (none more); "" when all are."""
    if not reg.onnx:  # files only (``registry.log_files_model``): exactly these, nothing more
        want = {Path(name).name: sha256(data) for name, data in reg.files.items()}
    else:
        want = {"model.onnx": sha256(reg.onnx)}
        want |= {f"extra_files/{Path(name).name}": sha256(data) for name, data in reg.files.items()}
    for name, digest in want.items():
        if files.get(name) != digest:
            return name
    extra = sorted(n for n in files if (n.startswith("extra_files/") or not reg.onnx) and n not in want)
    return extra[0] if extra else ""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
