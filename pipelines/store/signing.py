"""The cache key that signs stored step outputs (HMAC-SHA256 over their manifest; the manifests
themselves and the cache look-up's check are in ``pipelines.store.artifacts``).

Whoever can write to the tracking server can plant a run with the right ``slimray.cache_key``
tag; only whoever holds this key can sign its manifest. The key is a file:

- ``SLIMRAY_CACHE_KEY_FILE`` when set (``cluster/up.sh`` points it at the cluster's own key and
  starts every Ray node with it, so drivers, jobs and workers sign alike);
- else ``$XDG_CONFIG_HOME/slimray/cache.key`` (``~/.config/slimray/cache.key``), created with
  mode 0600 on first use.

A key file that other users may read, or its group may write, is refused (one line): a key
others can read signs for them too. It must belong to this user or to root (a Kubernetes secret
volume: root-owned, group-readable by the pod's fsGroup). The key travels as a file path in
the environment, never on a command line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from pathlib import Path

from pipelines.store.preflight import PreflightError

ENV = "SLIMRAY_CACHE_KEY_FILE"
ALGORITHM = "HMAC-SHA256"


class CacheKeyError(PreflightError):
    """The cache key cannot be used; one line naming the file."""


def key_path() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "slimray" / "cache.key"


def _create(path: Path) -> None:
    """Write a new random key atomically with mode 0600; a concurrent creator's key wins."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cache.key.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)  # fails if it exists: never replaces a key in use
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def load_key(create: bool = True) -> bytes:
    """The signing key (created on first use where it is the default or a missing env path)."""
    path = key_path()
    if not path.exists():
        if not create:
            raise CacheKeyError(f"{path}: cache key missing (set {ENV} or run once locally to create it)")
        _create(path)
    st = path.stat()
    if st.st_mode & (stat.S_IRWXO | stat.S_IWGRP | stat.S_IXGRP):
        raise CacheKeyError(
            f"{path}: cache key is accessible to other users (mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it"
        )
    if st.st_uid not in (os.geteuid(), 0):
        raise CacheKeyError(f"{path}: cache key is owned by uid {st.st_uid}, not by this user or root")
    key = path.read_text().strip()
    if len(key) < 32:
        raise CacheKeyError(f"{path}: cache key too short ({len(key)} characters; want 64 hex digits)")
    return key.encode()


def _payload(files: dict, context: str) -> bytes:
    return json.dumps({"context": context, "files": files}, sort_keys=True, separators=(",", ":")).encode()


def sign(files: dict, context: str, key: bytes | None = None) -> str:
    """The signature of a manifest's file list bound to ``context`` (the step's cache key)."""
    return hmac.new(key if key is not None else load_key(), _payload(files, context), hashlib.sha256).hexdigest()


def valid(files: dict, context: str, signature: object, key: bytes | None = None) -> bool:
    return isinstance(signature, str) and hmac.compare_digest(sign(files, context, key), signature)
