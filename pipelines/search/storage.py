"""Whose files a search resumes from. ``Tuner.restore`` unpickles Tune's experiment state (and
the searcher's) from ``search.storage``: whoever can write there runs code in the driver. So a
search restores only from a directory tree that this user owns and nobody else can write, under
parents nobody else can swap it in (a world-writable parent needs the sticky bit, as /tmp has);
anything else is refused with one line before Ray starts. A new storage root is created 0700."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pipelines.store.preflight import PreflightError


class UnsafeStorage(PreflightError):
    """The search's storage could be written by another user; one line naming the path."""


def _refuse(path: Path, why: str) -> UnsafeStorage:
    return UnsafeStorage(
        f"search.storage: {path} {why}; refusing to restore Tune state from it (it is unpickled): "
        f"make it yours and not group/world-writable (chmod go-w), or set search.storage to a private directory"
    )


def _check_entry(path: Path, uid: int) -> None:
    st = path.lstat()
    if st.st_uid != uid:
        raise _refuse(path, f"is owned by uid {st.st_uid}, not by this user (uid {uid})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not stat.S_ISLNK(st.st_mode):
        raise _refuse(path, f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})")


def _check_parents(path: Path, uid: int) -> None:
    for parent in path.parents:
        st = parent.stat()
        sticky = bool(st.st_mode & stat.S_ISVTX)
        if st.st_uid not in (uid, 0):
            raise _refuse(parent, f"(a parent) is owned by uid {st.st_uid}")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky:
            raise _refuse(parent, f"(a parent) is writable by other users (mode {stat.S_IMODE(st.st_mode):o})")


def check_restorable(root: Path, name: str) -> None:
    """Raise ``UnsafeStorage`` unless ``root/name`` (when it exists: a resume) and everything
    in it are this user's and not writable by others. Creates ``root`` 0700 when missing."""
    uid = os.geteuid()
    if not root.exists():
        root.mkdir(parents=True, mode=0o700)
    _check_parents(root, uid)
    _check_entry(root, uid)
    state = root / name
    if not state.exists():
        return
    for dirpath, dirnames, filenames in os.walk(state):
        for entry in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            _check_entry(Path(entry), uid)
