"""Content hashes of the files and directories a step's params name, for its cache key
(``pipelines.store.keys``): streamed, and remembered by ``code.stamp`` (path, mtime, size, inode,
ctime) in memory and in ``<SLIMRAY_CACHE_DIR>/file-hashes.json``, so an unchanged multi-GB data set
is hashed once; a directory is every regular file under it by relative path, through symlinked
subdirectories."""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

from pipelines.store import code, dists

HASHES_FORMAT = 2  # of file-hashes.json: entries of another format (another stamp) are not read


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _hash_cache_path() -> Path:
    return dists.cache_dir() / "file-hashes.json"


def _files_under(root: Path) -> list[tuple[str, Path]]:
    """Every file under a directory as ``(relative path, path)``, also under symlinked
    subdirectories (``rglob`` does not enter them); a link to a directory above it (a cycle) is not
    entered again."""
    found: list[tuple[str, Path]] = []

    def walk(folder: Path, rel: str, above: frozenset) -> None:
        st = folder.stat()
        here = (st.st_dev, st.st_ino)
        if here in above:
            return
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:  # the step cannot read it either; listed so access granted later counts
            found.append((f"{rel}<unreadable>", folder))
            return
        for entry in entries:
            if entry.is_dir():  # follows links
                walk(Path(entry.path), f"{rel}{entry.name}/", above | {here})
            elif entry.is_file():  # regular files (a FIFO or a device is never read)
                found.append((f"{rel}{entry.name}", Path(entry.path)))

    walk(root, "", frozenset())
    return found


class FileHasher:
    """sha256 of files (streamed) and directories (every file under it, by relative path),
    remembered by ``code.stamp`` (path, mtime, size, inode, ctime) so an unchanged multi-GB data set
    is hashed once; a file changed too recently to trust its stamp is remembered for this hasher's
    lifetime only (one ``step_keys``)."""

    def __init__(self, store: Path | None = None):
        self.store = store or _hash_cache_path()
        try:
            stored = json.loads(self.store.read_text())
            self.known: dict[str, str] = stored["files"] if stored["format"] == HASHES_FORMAT else {}
        except (OSError, ValueError, TypeError, KeyError):
            self.known = {}
        self.fresh: dict[str, str] = {}
        self.dirty = False

    def file(self, path: Path) -> str:
        real = os.path.realpath(path)
        st = os.stat(real)
        memo = code.stamp(real, st)
        hit = self.known.get(memo) or self.fresh.get(memo)
        if hit is None:
            h = hashlib.sha256()
            with open(real, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            hit = h.hexdigest()
            if code.settled(st):
                self.known[memo], self.dirty = hit, True
            else:
                self.fresh[memo] = hit
        return hit

    def path(self, path: Path) -> str:
        if path.is_dir():
            return _sha({rel: "unreadable" if p.is_dir() else self.file(p) for rel, p in _files_under(path)})
        return self.file(path)

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.store.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"format": HASHES_FORMAT, "files": self.known}))
            tmp.replace(self.store)  # atomic: a concurrent reader never sees half a file
        except OSError:
            pass  # a read-only home: hashes are recomputed next time, keys are unaffected
        self.dirty = False


def param_strings(node, prefix: str = ""):
    """Every ``(dotted path, string)`` leaf of a params tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from param_strings(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from param_strings(v, f"{prefix}{i}.")
    elif isinstance(node, str) and node:
        yield prefix[:-1], node


def file_hashes(params, hasher: FileHasher) -> dict[str, str]:
    """``{dotted param path: content hash}`` for every string param naming an existing regular file or
    directory, with or without a separator or a suffix (``data.path=cifar-10-batches-py``,
    ``tokenizer: my_tok``), or a glob that matches files (``input_path: data/part-*.parquet``: the
    matched paths and their contents, so a file added, removed or changed changes the key)."""
    out = {}
    for k, v in param_strings(params):
        if os.path.isfile(v) or os.path.isdir(v):
            out[k] = hasher.path(Path(v))
        elif any(c in v for c in "*?["):
            matched = sorted(glob.glob(v, recursive=True))
            if matched:
                out[k] = _sha({m: hasher.path(Path(m)) for m in matched})
    return out
