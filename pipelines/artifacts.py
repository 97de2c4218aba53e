"""Codecs for step outputs: safetensors for tensors, JSON for everything else, raw files for
bytes (ONNX models, PNGs). Never pickle: decoding only rebuilds the dataclasses listed in
``tasks.types.ARTIFACT_TYPES``.

Layout of an encoded value in a directory::

    value.json          the structure, with {"__tensor__": k} / {"__bytes__": file} leaves
    tensors.safetensors all tensors by key
    blobs/<file>        bytes fields (e.g. onnx.onnx, pareto.png)
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tasks.types import ARTIFACT_TYPES

KNOWN_SUFFIXES = (".onnx", ".png", ".md", ".json", ".txt", ".csv")


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
            raise TypeError(f"{name} is not a registered artifact type (tasks.types.ARTIFACT_TYPES)")
        return {"__type__": name, "fields": {f.name: _encode(getattr(obj, f.name), f"{path}.{f.name}", tensors, blobs)
                                             for f in dataclasses.fields(obj)}}
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
    return d


def _decode(node, tensors: dict, blob_dir: Path):
    if isinstance(node, list):
        return [_decode(v, tensors, blob_dir) for v in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__bytes__" in node:
        return (blob_dir / Path(node["__bytes__"]).name).read_bytes()
    if "__dict__" in node:
        return {k: _decode(v, tensors, blob_dir) for k, v in node["__dict__"].items()}
    cls = ARTIFACT_TYPES.get(node.get("__type__"))
    if cls is None:
        raise ValueError(f"unknown artifact type '{node.get('__type__')}' in stored output")
    return cls(**{k: _decode(v, tensors, blob_dir) for k, v in node["fields"].items()})


def load(directory: str | Path):
    d = Path(directory)
    if not (d / "value.json").exists():
        raise FileNotFoundError(f"{d}: no value.json (not a stored step output)")
    st = d / "tensors.safetensors"
    tensors = load_file(str(st)) if st.exists() else {}
    return _decode(json.loads((d / "value.json").read_text()), tensors, d / "blobs")
