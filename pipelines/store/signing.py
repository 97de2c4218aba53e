"""The cache key that signs stored step outputs (HMAC-SHA256 over their manifest; the manifests
themselves are checked in ``pipelines.store.manifest``, the cache look-up in ``pipelines.store.artifacts``).

Whoever can write to the tracking server can plant a run with the right ``slimray.cache_key``
tag; only whoever holds this key can sign its manifest. The key is a file:

- ``SLIMRAY_CACHE_KEY_FILE`` when set (``cluster/up.sh`` creates the cluster's key and starts
  every Ray node with it, so drivers, jobs and workers sign alike);
- else ``$XDG_CONFIG_HOME/slimray/cache.key`` (``~/.config/slimray/cache.key``).

Who creates a key: only the command that sets a store up (``cluster/up.sh``, or ``slimray key
init [PATH]``) and, on a laptop, the driver of a local run (``ray.address`` unset) when
``SLIMRAY_CACHE_KEY_FILE`` is unset: it creates the default file, mode 0600, before any Ray
worker starts (``local_default``). Nothing else does: a Ray worker or job, or any process whose
``SLIMRAY_CACHE_KEY_FILE`` names a missing file, fails in one line naming its node (hostname,
Ray node id) and the path (``load_key``); a driver checks this before anything starts
(``driver_key``, from ``pipelines.run.lifecycle``). A node that made its own key would sign with it, fail
to verify every good entry and look like tampering.

Every entry carries the id of the key that signed it (``key_id``: the first 16 hex digits of
the key's sha256, never the key), so an entry signed with another key is told apart from a
forged or damaged one.

The rule for the file, exactly (``check_mode``): it must be owned by this user or by root; no
permission bit for others; no group write or execute; group *read* only when root owns the
file and this process is not root (a Kubernetes secret volume with ``fsGroup``: root-owned,
mode 0440, read through the pod's group). So a key this process owns, root's own included,
must be 0600 or 0400: a group-readable 0640 is refused (its group could sign too). The key
travels as a file path in the environment, never on a command line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import stat
import sys
import tempfile
from pathlib import Path

from pipelines.store.preflight import PreflightError

ENV = "SLIMRAY_CACHE_KEY_FILE"
ALGORITHM = "HMAC-SHA256"
SIGNATURE = re.compile(r"[0-9a-f]{64}")  # what ``sign`` writes: lowercase hex of a SHA-256 MAC
KEY_ID = re.compile(r"[0-9a-f]{16}")


class CacheKeyError(PreflightError):
    """The cache key cannot be used; one line naming the node and the file."""


def key_path() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "slimray" / "cache.key"


def node() -> str:
    """This process's node for an error line: the hostname and, in a process connected to Ray
    (a worker, a job's driver), the Ray node id. Never imports Ray itself."""
    where = f"host {socket.gethostname()}"
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        where += f", Ray node {ray.get_runtime_context().get_node_id()}"
    return where


def create(path: Path | None = None) -> bool:
    """Write a new random key at ``path`` (default ``key_path()``) with mode 0600 unless one is
    there; whether it wrote one. Atomic: a concurrent creator's key wins, an existing key is
    never replaced. For the commands that set a store up and ``local_default`` only."""
    path = path or key_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cache.key.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)  # fails if it exists: never replaces a key in use
            return True
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)


def local_default(ray_address: str | None) -> None:
    """The laptop's key: the driver of a local run (``ray_address`` None: it starts its own Ray)
    creates the default key file when ``SLIMRAY_CACHE_KEY_FILE`` is unset and the file is
    missing, before any worker needs it. A driver joining a cluster, or one pointed at a key by
    ``SLIMRAY_CACHE_KEY_FILE``, never creates one."""
    if ray_address is None and not os.environ.get(ENV):
        create(key_path())


def driver_key(ray_address: str | None) -> None:
    """A driver's check before it does anything: the laptop's key created for a local run
    (``local_default``), then the key must load, so that a driver without it fails in one line
    (``CacheKeyError``) before any step computes, not after."""
    local_default(ray_address)
    load_key()


def _missing(path: Path) -> str:
    if os.environ.get(ENV):
        how = f"{ENV} names it: give this node the store's key file there (cluster/up.sh and the cluster's secret do)"
    else:
        how = (
            f"{ENV} is unset: a local run creates this default, a Ray worker or job never does; "
            f"set {ENV} to the store's key (or create one: slimray key init)"
        )
    return f"{node()}: cache key {path} missing ({how})"


def check_mode(path: Path, st: os.stat_result, euid: int | None = None) -> None:
    """Refuse a key others could read or change (the rule in the module docstring) for a
    process running as ``euid`` (default: this one's)."""
    euid = os.geteuid() if euid is None else euid
    mode = stat.S_IMODE(st.st_mode)
    # a secret volume: the platform's root-owned file, read through the pod's fsGroup; a key
    # this process owns (root's own included) must not be readable by its group
    group_read_ok = st.st_uid == 0 and euid != 0
    forbidden = stat.S_IRWXO | stat.S_IWGRP | stat.S_IXGRP | (0 if group_read_ok else stat.S_IRGRP)
    if mode & forbidden:
        raise CacheKeyError(
            f"{node()}: cache key {path} is accessible to other users "
            f"(mode {mode:o}, owner uid {st.st_uid}); chmod 600 it"
        )
    if st.st_uid not in (euid, 0):
        raise CacheKeyError(f"{node()}: cache key {path} is owned by uid {st.st_uid}, not by this user or root")


def load_key() -> bytes:
    """The signing key; never creates one (``CacheKeyError``, one line, when it is missing,
    shared or unreadable)."""
    path = key_path()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CacheKeyError(_missing(path)) from None
    except OSError as e:
        raise CacheKeyError(f"{node()}: cache key {path} unreadable ({e.strerror or e})") from None
    check_mode(path, st)
    try:
        key = path.read_bytes().strip()
    except OSError as e:
        raise CacheKeyError(f"{node()}: cache key {path} unreadable ({e.strerror or e})") from None
    if len(key) < 32:
        raise CacheKeyError(f"{node()}: cache key {path} too short ({len(key)} characters; want 64 hex digits)")
    return key


def key_id(key: bytes | None = None) -> str:
    """The public name of a key (first 16 hex digits of its sha256): tells which key signed an
    entry without revealing it."""
    return hashlib.sha256(key if key is not None else load_key()).hexdigest()[:16]


def _payload(files: dict, context: str) -> bytes:
    return json.dumps({"context": context, "files": files}, sort_keys=True, separators=(",", ":")).encode()


def sign(files: dict, context: str, key: bytes | None = None) -> str:
    """The signature of a manifest's file list bound to ``context`` (the step's cache key)."""
    return hmac.new(key if key is not None else load_key(), _payload(files, context), hashlib.sha256).hexdigest()


def valid(files: dict, context: str, signature: object, key: bytes | None = None) -> bool:
    """Whether ``signature`` is this key's signature of the file list; False (never an
    exception) for anything that is not 64 lowercase hex digits, e.g. a non-ASCII string, which
    ``hmac.compare_digest`` would refuse with ``TypeError``."""
    if not isinstance(signature, str) or not SIGNATURE.fullmatch(signature):
        return False
    return hmac.compare_digest(sign(files, context, key).encode(), signature.encode())


USAGE = "usage: slimray key init [PATH] | slimray key id"


def main(args: list[str]) -> int:
    """``slimray key init [PATH]``: create the store's key (default: ``SLIMRAY_CACHE_KEY_FILE``,
    else the laptop's default file) unless it exists; ``slimray key id``: the id of the key this
    process would sign with, to compare nodes' configurations."""
    try:
        if args[:1] == ["init"] and len(args) <= 2:
            path = Path(args[1]).expanduser() if len(args) == 2 else key_path()
            made = create(path)
            print(f"{'created' if made else 'kept the existing'} cache key {path}", file=sys.stderr)
            if path != key_path():
                print(f"point every node at it: export {ENV}={path.resolve()}", file=sys.stderr)
            return 0
        if args == ["id"]:
            print(f"{key_id()}  {key_path()}")
            return 0
    except (OSError, CacheKeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"error: {USAGE}", file=sys.stderr)
    return 2
