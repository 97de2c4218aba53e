"""Codecs for step outputs: safetensors for tensors, JSON for everything else, raw files for
bytes (ONNX models, PNGs). Never pickle: decoding only rebuilds the dataclasses listed in
``tasks.core.types.ARTIFACT_TYPES``.

Layout of an encoded value in a directory::

    value.json          the structure, with {"__tensor__": k} / {"__bytes__": file} leaves
    tensors.safetensors all tensors by key
    blobs/<file>        bytes fields (e.g. onnx.onnx, pareto.png)
    manifest.json       size and sha256 of every file above, written last

Loading checks the manifest first, so a truncated or corrupt file (safetensors, an ONNX blob,
value.json) is one ``ArtifactError`` line naming the file, never a half-decoded value or a
model that fails later inside ONNX Runtime. Outputs stored before the manifest existed still
load; their decoding errors are reported the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

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


def save(obj, directory: str | Path) -> Path:
    """Write ``obj`` into ``directory`` (created); returns the directory."""
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
    (d / MANIFEST).write_text(json.dumps({"files": manifest}, indent=1))
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


def _verify(d: Path, origin: str) -> None:
    """Every file listed in the manifest is present with its size and sha256."""
    try:
        listed = json.loads((d / MANIFEST).read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(origin, MANIFEST, f"unreadable ({type(e).__name__}: {e})") from None
    for name, want in listed.items():
        path = d / name
        if not path.is_file():
            raise ArtifactError(origin, name, "missing")
        got = _digest(path)
        if got["size"] != want.get("size"):
            raise ArtifactError(origin, name, f"truncated or altered: {got['size']} bytes, stored {want.get('size')}")
        if got["sha256"] != want.get("sha256"):
            raise ArtifactError(origin, name, "corrupt: sha256 differs from the manifest")


def load(directory: str | Path, origin: str | None = None):
    """Decode a value written by ``save``. ``origin`` names it in errors (e.g. the MLflow run)."""
    d = Path(directory)
    origin = origin or str(d)
    if not (d / "value.json").exists():
        raise ArtifactError(origin, "value.json", "missing (not a stored step output)")
    if (d / MANIFEST).exists():
        _verify(d, origin)
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
