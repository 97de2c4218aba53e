"""Codecs for step outputs: safetensors for tensors, JSON for everything else, raw files for
bytes (ONNX models, PNGs). Never pickle: decoding only rebuilds the dataclasses listed in
``tasks.core.types.ARTIFACT_TYPES``.

Layout of an encoded value in a directory::

    value.json          the structure, with {"__tensor__": k} / {"__bytes__": file} leaves
    tensors.safetensors all tensors by key
    blobs/<file>        bytes fields (e.g. onnx.onnx, pareto.png)
    manifest.json       size and sha256 of every file above, the context (the step's cache key)
                        and their HMAC-SHA256 signature (pipelines.store.signing), written last

Loading checks the manifest first: it must be there, its signature must verify with the
user's or cluster's key (for the expected context, when given), and every file must match its
size and sha256. A missing, unsigned or wrongly signed manifest, or a truncated, corrupt or
swapped file (safetensors, an ONNX blob, value.json) is one ``ArtifactError`` line naming the
file, never a half-decoded value or a model that fails later inside ONNX Runtime.

The manifest is read as hostile input (``pipelines.store.manifest``): whatever its bytes, the
outcome is an ``ArtifactError``, never another exception, so a cache lookup (``trusted_entry``)
skips the entry and goes on. The manifest also names the id of the key that signed it
(``key_id``): an entry signed with another key is a ``KeyMismatch`` (a configuration error: nodes
with different keys), which ``mark_corrupt`` never tags corrupt.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipelines.store import signing
from pipelines.store.manifest import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    ArtifactError,
    KeyMismatch,
    check_manifest,
    digest,
    verify_folder,
)
from tasks.core.types import ARTIFACT_TYPES

KNOWN_SUFFIXES = (".onnx", ".png", ".md", ".json", ".txt", ".csv")
KEY_ID_TAG = "slimray.key_id"
log = logging.getLogger(__name__)


def _encode(obj, path: str, tensors: dict, blobs: dict):
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        return _encode(torch.from_numpy(obj), path, tensors, blobs)
    if isinstance(obj, (bytes, bytearray)):
        name = re.sub(r"[^\w.-]", "_", path)
        if not name.endswith(KNOWN_SUFFIXES):
            name += ".onnx" if name.endswith("onnx") else ".bin"
        blobs[name] = bytes(obj)
        return {"__bytes__": name}
    if dataclasses.is_dataclass(obj):
        name = type(obj).__name__
        if ARTIFACT_TYPES.get(name) is not type(obj):
            raise TypeError(f"{name} is not a registered artifact type (tasks.core.types.ARTIFACT_TYPES)")
        return {
            "__type__": name,
            "fields": {
                f.name: _encode(getattr(obj, f.name), f"{path}.{f.name}", tensors, blobs)
                for f in dataclasses.fields(obj)
            },
        }
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"{path}: dict keys must be strings")
        return {"__dict__": {k: _encode(v, f"{path}.{k}", tensors, blobs) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, f"{path}.{i}", tensors, blobs) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{path}: cannot store a {type(obj).__name__} (use tensors, bytes or JSON values)")


def entry_context(run_id: str, cache_key: str, folder: str) -> str:
    """What a stored folder's signature is bound to: the run, the step's cache key and the
    folder, so a signed output cannot be replayed into another run, under another key or as a
    publication."""
    return f"{run_id}/{cache_key}/{folder}"


def save(obj, directory: str | Path, context: str = "") -> Path:
    """Write ``obj`` into ``directory`` (created), its manifest signed for ``context``; returns
    the directory."""
    d = Path(directory)
    (d / "blobs").mkdir(parents=True, exist_ok=True)
    tensors: dict = {}
    blobs: dict = {}
    tree = _encode(obj, "value", tensors, blobs)
    if tensors:
        save_file(tensors, str(d / "tensors.safetensors"))
    for name, data in blobs.items():
        (d / "blobs" / name).write_bytes(data)
    (d / "value.json").write_text(json.dumps(tree, indent=1))
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(d)): digest(p) for p in files}
    key = signing.load_key()
    body = {
        "files": manifest,
        "context": context,
        "algorithm": signing.ALGORITHM,
        "key_id": signing.key_id(key),
        "signature": signing.sign(manifest, context, key),
    }
    (d / MANIFEST).write_text(json.dumps(body, indent=1))
    return d


def _decode(node, tensors: dict, blob_dir: Path):
    if isinstance(node, list):
        return [_decode(v, tensors, blob_dir) for v in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        if node["__tensor__"] not in tensors:
            raise KeyError(f"tensor '{node['__tensor__']}' is not in tensors.safetensors")
        return tensors[node["__tensor__"]]
    if "__bytes__" in node:
        return (blob_dir / Path(node["__bytes__"]).name).read_bytes()
    if "__dict__" in node:
        return {k: _decode(v, tensors, blob_dir) for k, v in node["__dict__"].items()}
    cls = ARTIFACT_TYPES.get(str(node.get("__type__")))
    if cls is None:
        raise ValueError(f"unknown artifact type '{node.get('__type__')}' in stored output")
    return cls(**{k: _decode(v, tensors, blob_dir) for k, v in node["fields"].items()})


def load(directory: str | Path, origin: str | None = None, context: str | None = None):
    """Decode a value written by ``save`` once its signed manifest verifies (for ``context``,
    when given). ``origin`` names it in errors (e.g. the MLflow run)."""
    d = Path(directory)
    origin = origin or str(d)
    if not (d / "value.json").exists():
        raise ArtifactError(origin, "value.json", "missing (not a stored step output)")
    verify_folder(d, origin, context)
    st = d / "tensors.safetensors"
    try:
        tensors = load_file(str(st)) if st.exists() else {}
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError) on bad headers
        raise ArtifactError(origin, st.name, f"unreadable ({type(e).__name__}: {e})") from None
    try:
        tree = json.loads((d / "value.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(origin, "value.json", f"not valid JSON ({e})") from None
    try:
        return _decode(tree, tensors, d / "blobs")
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as e:
        raise ArtifactError(origin, "value.json", f"does not decode ({type(e).__name__}: {e})") from None


def mark_corrupt(client, run_id: str, error: ArtifactError) -> bool:
    """The one place that decides whether a stored entry that failed its check (``error``) is
    tagged ``slimray.stored=corrupt``, so that no lookup offers it again: damage or tampering
    is; an entry signed with another key (``KeyMismatch``) is a configuration error and is
    never tagged (a node with the wrong key must not condemn good entries). Whether it tagged."""
    if isinstance(error, KeyMismatch):
        return False
    client.set_tag(run_id, "slimray.stored", "corrupt")
    client.set_tag(run_id, "slimray.error", str(error)[:500])
    return True


_warned: set[str] = set()


def _skip_other_key(run_id: str, theirs: str, ours: str) -> bool:
    """A candidate signed with another key: skipped, never tagged; said once per key id."""
    if theirs not in _warned:
        _warned.add(theirs)
        log.warning(
            "cache entries such as run %s are signed with another key (key id %s); this driver's key %s has id %s: "
            "skipped, not tagged (a configuration error, not tampering: set %s to the store's key)",
            run_id,
            theirs,
            signing.key_path(),
            ours,
            signing.ENV,
        )
    return False


def trusted_entry(client, run, key: str) -> bool:
    """Whether ``run`` (a cache candidate for ``key``) holds signed manifests for ``key``:
    ``output/`` always, ``publish/`` when tagged. Only the manifests are downloaded here; the
    files are checked against them when loaded. A run that names another key's id (its
    ``slimray.key_id`` tag or its manifest) is skipped and left as it is; any other failure
    (missing, malformed, huge, unsigned, forged, replayed manifest) tags the run
    ``slimray.stored=untrusted`` (with the reason), so no lookup offers it again."""
    run_id = run.info.run_id
    ours = signing.key_id()
    theirs = run.data.tags.get(KEY_ID_TAG)
    if theirs is not None and theirs != ours:
        return _skip_other_key(run_id, str(theirs)[:20], ours)
    dirs = ["output"] + (["publish"] if run.data.tags.get("slimray.publishes") == "true" else [])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for d in dirs:
                _check_remote(client, run_id, d, entry_context(run_id, key, d), Path(tmp))
        return True
    except KeyMismatch as e:
        return _skip_other_key(run_id, e.theirs, ours)
    except ArtifactError as e:
        client.set_tag(run_id, "slimray.stored", "untrusted")
        client.set_tag(run_id, "slimray.error", str(e)[:500])
        return False


def _check_remote(client, run_id: str, folder: str, context: str, tmp: Path) -> None:
    """Check ``folder``'s manifest on the server: its listed size first (a huge one is refused
    without downloading it), then its contents."""
    origin = f"cache entry of run {run_id}"
    name = f"{folder}/{MANIFEST}"
    try:
        listed = {f.path: f.file_size for f in client.list_artifacts(run_id, folder)}
    except Exception:  # noqa: BLE001 - absent on the server: MLflow raises several types
        listed = {}
    if name not in listed:
        raise ArtifactError(origin, name, "missing")
    if (listed[name] or 0) > MAX_MANIFEST_BYTES:
        raise ArtifactError(origin, name, f"too large ({listed[name]} bytes; at most {MAX_MANIFEST_BYTES})")
    try:
        local = client.download_artifacts(run_id, name, str(tmp))
    except Exception:  # noqa: BLE001
        raise ArtifactError(origin, name, "missing") from None
    check_manifest(Path(local), context, origin, name)
