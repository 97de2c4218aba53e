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

The manifest is read as hostile input: whatever its bytes (over 1 MiB, not UTF-8, not JSON, a
signature that is not 64 hex digits or not ASCII, a file list naming a path outside the folder,
fields of the wrong type), the outcome is an ``ArtifactError``, never another exception, so a
cache lookup skips the entry and goes on. The manifest also names the id of the key that signed
it (``key_id``): an entry signed with another key is a ``KeyMismatch`` (a configuration error:
nodes with different keys), which ``mark_corrupt`` never tags corrupt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
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
MAX_MANIFEST_BYTES = 1 << 20  # a real one lists a few files (~150 bytes each)
MAX_FILES = 10_000
# the only files ``save`` writes: value.json, tensors.safetensors, blobs/<name from _encode>
LISTED_NAME = re.compile(r"value\.json|tensors\.safetensors|blobs/(?!\.\.?$)[\w.-]{1,255}")
SHA256 = re.compile(r"[0-9a-f]{64}")
KEY_ID_TAG = "slimray.key_id"
log = logging.getLogger(__name__)


class ArtifactError(ValueError):
    """A stored output that cannot be trusted; one line naming where it came from and the file."""

    def __init__(self, origin: str, file: str, reason: str):
        super().__init__(f"{origin}: {file}: {reason}".replace("\n", " "))
        self.origin, self.file, self.reason = origin, file, reason

    def __reduce__(self):  # Ray ships a task's exception to the driver by pickling it
        return type(self), (self.origin, self.file, self.reason)


class KeyMismatch(ArtifactError):
    """An entry signed with another key than this node's: a configuration error (nodes or
    drivers given different keys), not damage or tampering; never tagged corrupt. Names both
    key ids, this node and its key file."""

    def __init__(self, origin: str, file: str, theirs: str, ours: str, reason: str = ""):
        self.theirs, self.ours = theirs, ours
        reason = reason or (
            f"signed with another key (key id {theirs}); this node's key {signing.key_path()} has id {ours} "
            f"({signing.node()}): a configuration error, not tampering: give every node and driver the "
            f"store's key ({signing.ENV})"
        )
        super().__init__(origin, file, reason)

    def __reduce__(self):  # the reason as written on the node that found it
        return type(self), (self.origin, self.file, self.theirs, self.ours, self.reason)


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


def _parse(path: Path, origin: str, name: str) -> dict:
    """The manifest's JSON object, or an ``ArtifactError``: whatever the file holds."""
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ArtifactError(origin, name, f"too large ({size} bytes; at most {MAX_MANIFEST_BYTES})")
    try:
        body = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ArtifactError(origin, name, f"unreadable (not JSON: {type(e).__name__}: {e})"[:300]) from None
    if not isinstance(body, dict):
        raise ArtifactError(origin, name, f"unreadable (a JSON object expected, got {type(body).__name__})")
    return body


def _listing_problem(files: object) -> str | None:
    """What is wrong with a manifest's file list, or None: an object of at most ``MAX_FILES``
    names that ``save`` could have written (never a path outside the folder), each with an
    integer size and a sha256 of 64 hex digits."""
    if not isinstance(files, dict):
        return f"'files' must be an object, not {type(files).__name__}"
    if len(files) > MAX_FILES:
        return f"lists {len(files)} files (at most {MAX_FILES})"
    for name, entry in files.items():
        if not LISTED_NAME.fullmatch(name):
            return f"lists a file slimray never writes: {name[:80]!r}"
        if not isinstance(entry, dict) or set(entry) != {"size", "sha256"}:
            return f"{name[:80]!r}: want exactly size and sha256"
        size, sha = entry["size"], entry["sha256"]
        if type(size) is not int or size < 0 or not isinstance(sha, str) or not SHA256.fullmatch(sha):
            return f"{name[:80]!r}: size must be a non-negative integer and sha256 64 hex digits"
    return None


def _header_problem(body: dict) -> str | None:
    """What is wrong with the manifest's other fields, or None (a missing signature is told
    apart by the caller: unsigned)."""
    context, signature, kid = body.get("context", ""), body.get("signature"), body.get("key_id")
    if not isinstance(context, str) or len(context) > 2000:
        return "'context' must be a string of at most 2000 characters"
    if body.get("algorithm", signing.ALGORITHM) != signing.ALGORITHM:
        return f"'algorithm' must be {signing.ALGORITHM}"
    if signature and not (isinstance(signature, str) and signing.SIGNATURE.fullmatch(signature)):
        got = f"{type(signature).__name__} {str(signature)[:20]!r}"
        return f"malformed signature (want 64 lowercase hex digits, got {got})"
    if kid is not None and not (isinstance(kid, str) and signing.KEY_ID.fullmatch(kid)):
        return f"malformed key_id (want 16 lowercase hex digits, got {str(kid)[:20]!r})"
    return None


def check_manifest(path: Path, context: str | None, origin: str, name: str = MANIFEST) -> dict:
    """The signed file list of the manifest at ``path``; an ``ArtifactError`` (and no other
    exception) when it is missing, malformed, unsigned, signed for another context or does not
    verify; a ``KeyMismatch`` when it names another key's id. A missing or shared key file is
    a ``signing.CacheKeyError`` (configuration: it concerns every entry, not this one)."""
    if not path.is_file():
        raise ArtifactError(origin, name, "missing (every stored output must have a signed manifest)")
    body = _parse(path, origin, name)
    problem = _listing_problem(body.get("files")) or _header_problem(body)
    if problem:
        raise ArtifactError(origin, name, f"malformed ({problem})")
    listed, signature, signed_for = body["files"], body.get("signature"), body.get("context", "")
    if not signature:
        raise ArtifactError(origin, name, "unsigned (not written by this cluster or user)")
    key = signing.load_key()
    if not signing.valid(listed, signed_for, signature, key):
        theirs, ours = body.get("key_id"), signing.key_id(key)
        if theirs is not None and theirs != ours:
            raise KeyMismatch(origin, name, theirs, ours)
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
        if got["size"] != want["size"]:
            raise ArtifactError(origin, name, f"truncated or altered: {got['size']} bytes, stored {want['size']}")
        if got["sha256"] != want["sha256"]:
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
