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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipelines.store import signing
from tasks.core.types import ARTIFACT_TYPES

KNOWN_SUFFIXES = (".onnx", ".png", ".md", ".json", ".txt", ".csv")
MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """A stored output that cannot be trusted; one line naming where it came from and the file."""

    def __init__(self, origin: str, file: str, reason: str):
        super().__init__(f"{origin}: {file}: {reason}".replace("\n", " "))
        self.origin, self.file, self.reason = origin, file, reason

    def __reduce__(self):  # Ray ships a task's exception to the driver by pickling it
        return type(self), (self.origin, self.file, self.reason)


def _digest(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


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
    manifest = {str(p.relative_to(d)): _digest(p) for p in files}
    signature = signing.sign(manifest, context)
    body = {"files": manifest, "context": context, "algorithm": signing.ALGORITHM, "signature": signature}
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


def check_manifest(path: Path, context: str | None, origin: str, name: str = MANIFEST) -> dict:
    """The signed file list of the manifest at ``path``; an ``ArtifactError`` when it is
    missing, unreadable, unsigned, signed for another context or with another key."""
    if not path.is_file():
        raise ArtifactError(origin, name, "missing (every stored output must have a signed manifest)")
    try:
        body = json.loads(path.read_text())
        listed, signature, signed_for = body["files"], body.get("signature"), body.get("context", "")
        if not isinstance(listed, dict) or not isinstance(signed_for, str):
            raise TypeError("files must be an object and context a string")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ArtifactError(origin, name, f"unreadable ({type(e).__name__}: {e})") from None
    if not signature:
        raise ArtifactError(origin, name, "unsigned (not written by this cluster or user)")
    if not signing.valid(listed, signed_for, signature):
        raise ArtifactError(origin, name, f"signature does not verify with the cache key ({signing.key_path()})")
    if context is not None and signed_for != context:
        raise ArtifactError(origin, name, f"signed for '{signed_for}', not for '{context}'")
    return listed


def _verify(d: Path, origin: str, context: str | None) -> None:
    """The manifest is signed and every file it lists is present with its size and sha256; no
    other file is there."""
    listed = check_manifest(d / MANIFEST, context, origin)
    for name, want in listed.items():
        path = d / name
        if not path.is_file():
            raise ArtifactError(origin, name, "missing")
        got = _digest(path)
        if got["size"] != want.get("size"):
            raise ArtifactError(origin, name, f"truncated or altered: {got['size']} bytes, stored {want.get('size')}")
        if got["sha256"] != want.get("sha256"):
            raise ArtifactError(origin, name, "corrupt: sha256 differs from the manifest")
    extra = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.name != MANIFEST)
    extra = [n for n in extra if n not in listed]
    if extra:
        raise ArtifactError(origin, extra[0], "not listed in the signed manifest")


def load(directory: str | Path, origin: str | None = None, context: str | None = None):
    """Decode a value written by ``save`` once its signed manifest verifies (for ``context``,
    when given). ``origin`` names it in errors (e.g. the MLflow run)."""
    d = Path(directory)
    origin = origin or str(d)
    if not (d / "value.json").exists():
        raise ArtifactError(origin, "value.json", "missing (not a stored step output)")
    _verify(d, origin, context)
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


def trusted_entry(client, run, key: str) -> bool:
    """Whether ``run`` (a cache candidate for ``key``) holds signed manifests for ``key``:
    ``output/`` always, ``publish/`` when tagged. Only the manifests are downloaded here; the
    files are checked against them when loaded. An untrusted run is tagged
    ``slimray.stored=untrusted`` (with the reason) so no lookup offers it again."""
    run_id = run.info.run_id
    dirs = ["output"] + (["publish"] if run.data.tags.get("slimray.publishes") == "true" else [])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for d in dirs:
                _check_remote(client, run_id, d, entry_context(run_id, key, d), Path(tmp))
        return True
    except ArtifactError as e:
        client.set_tag(run_id, "slimray.stored", "untrusted")
        client.set_tag(run_id, "slimray.error", str(e)[:500])
        return False


def _check_remote(client, run_id: str, folder: str, context: str, tmp: Path) -> None:
    origin = f"cache entry of run {run_id}"
    name = f"{folder}/{MANIFEST}"
    try:
        local = client.download_artifacts(run_id, name, str(tmp))
    except Exception:  # noqa: BLE001 - absent on the server: MLflow raises several types
        raise ArtifactError(origin, name, "missing") from None
    check_manifest(Path(local), context, origin, name)
