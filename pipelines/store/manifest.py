"""The signed manifest of a stored folder, read as hostile input, and the check of the folder's
files against it (``pipelines.store.artifacts`` writes both).

``manifest.json`` lists the size and sha256 of every file of the folder, the context it was
signed for (``artifacts.entry_context``), the id of the key that signed it (``key_id``) and the
HMAC-SHA256 signature (``pipelines.store.signing``). Whatever its bytes (over 1 MiB, not UTF-8,
not JSON, a signature that is not 64 hex digits or not ASCII, a file list naming a path outside
the folder, fields of the wrong type), the outcome of checking it is an ``ArtifactError``, never
another exception, so a cache lookup skips the entry and goes on. An entry signed with another
key is a ``KeyMismatch`` (a configuration error: nodes with different keys).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pipelines.store import signing

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20  # a real one lists a few files (~150 bytes each)
MAX_FILES = 10_000
# the only files ``artifacts.save`` writes: value.json, tensors.safetensors, blobs/<name from _encode>
LISTED_NAME = re.compile(r"value\.json|tensors\.safetensors|blobs/(?!\.\.?$)[\w.-]{1,255}")
SHA256 = re.compile(r"[0-9a-f]{64}")


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


def digest(path: Path) -> dict:
    """A file's manifest entry: its size and sha256."""
    return {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


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


def verify_folder(d: Path, origin: str, context: str | None) -> None:
    """The manifest is signed and every file it lists is present with its size and sha256; no
    other file is there."""
    listed = check_manifest(d / MANIFEST, context, origin)
    for name, want in listed.items():
        path = d / name
        if not path.is_file():
            raise ArtifactError(origin, name, "missing")
        got = digest(path)
        if got["size"] != want["size"]:
            raise ArtifactError(origin, name, f"truncated or altered: {got['size']} bytes, stored {want['size']}")
        if got["sha256"] != want["sha256"]:
            raise ArtifactError(origin, name, "corrupt: sha256 differs from the manifest")
    extra = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and p.name != MANIFEST)
    extra = [n for n in extra if n not in listed]
    if extra:
        raise ArtifactError(origin, extra[0], "not listed in the signed manifest")
