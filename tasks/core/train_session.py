"""Training loops that run on data-parallel workers without knowing Ray: the session they are given.

A task writes its loop as ``loop_fn(session, config)``: it asks ``session.restore()`` for the state of
the last checkpoint (None on a fresh start), wraps its model with ``session.prepare`` (DDP when the
world has several workers), and calls ``session.report(metrics, state)`` once per step on every rank,
passing ``state`` (model + optimizer + step, tensors and plain values) when a checkpoint is due, on
every rank at the same steps (a checkpoint is a barrier on Ray Train). Rank 0's state is written as
a checkpoint together with the metric rows reported so far, so the history a run returns has one row
per step, with no gap or duplicate after a resume: the rows after the last checkpoint are dropped
with it and reported again on replay.

The engine runs the loop on Ray Train (``pipelines.scale.train``); here ``LocalSession`` runs it in
this process (rank 0 of 1), optionally checkpointing to a folder it resumes from. Both write the same
checkpoint, with no pickle in it: the state's tensors in ``state.safetensors`` (named by their path in
the state, e.g. ``optimizer/state/3/exp_avg``), the rest of the state (numbers, strings, the nesting,
integer keys such as an optimizer's parameter ids) in ``state.json``, and ``history.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

STATE_FILE = "state.safetensors"
LAYOUT_FILE = "state.json"
HISTORY_FILE = "history.json"


class TrainSession(Protocol):
    rank: int
    world_size: int
    device: str

    def report(self, metrics: dict[str, float], state: dict | None = None) -> None: ...

    def restore(self) -> dict | None: ...

    def prepare(self, model: nn.Module) -> nn.Module: ...


LoopFn = Callable[[TrainSession, dict], Any]


def _split(obj: Any, path: str, tensors: dict[str, torch.Tensor], storages: set[int]) -> Any:
    """``obj`` as JSON with every tensor replaced by ``{"tensor": name}`` and put in ``tensors``; a dict
    as ``{"dict": [[key, value], ...]}`` so integer keys stay integers."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        tensors[path] = t.clone() if ptr in storages and t.numel() else t  # safetensors refuses shared memory
        storages.add(ptr)
        return {"tensor": path}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise ValueError(f"state: {path or '/'} has a key that is neither a string nor an integer")
        return {"dict": [[k, _split(v, f"{path}/{k}", tensors, storages)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_split(v, f"{path}/{i}", tensors, storages) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ValueError(f"state: {path or '/'} is a {type(obj).__name__} (tensors, numbers, strings, lists, dicts)")


def _join(layout: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``_split``."""
    if isinstance(layout, dict) and set(layout) == {"tensor"}:
        return tensors[layout["tensor"]]
    if isinstance(layout, dict):
        return {k: _join(v, tensors) for k, v in layout["dict"]}
    if isinstance(layout, list):
        return [_join(v, tensors) for v in layout]
    return layout


def save_checkpoint(folder: str | Path, state: dict, history: list[dict]) -> None:
    """``state`` (tensors, numbers, strings, lists, dicts) and the metric rows so far into ``folder``."""
    from safetensors.torch import save_file

    if not isinstance(state, dict):
        raise ValueError(f"state: a checkpoint needs a dict, got {type(state).__name__}")
    tensors: dict[str, torch.Tensor] = {}
    layout = _split(state, "", tensors, set())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / STATE_FILE))
    (folder / LAYOUT_FILE).write_text(json.dumps(layout))
    (folder / HISTORY_FILE).write_text(json.dumps(history))


def load_checkpoint(folder: str | Path) -> tuple[dict, list[dict]]:
    """(state, history) written by ``save_checkpoint``; tensors load on the CPU, nothing is unpickled."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (STATE_FILE, LAYOUT_FILE, HISTORY_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"checkpoint {folder}: {name} is missing")
    try:
        tensors = load_file(str(folder / STATE_FILE))
        state = _join(json.loads((folder / LAYOUT_FILE).read_text()), tensors)
        history = json.loads((folder / HISTORY_FILE).read_text())
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint, whatever the library says: one line
        raise ValueError(f"checkpoint {folder}: unreadable ({str(e).splitlines()[0] if str(e) else e!r})") from None
    if not isinstance(state, dict) or not isinstance(history, list):
        raise ValueError(f"checkpoint {folder}: state must be a dict and history a list")
    return state, history


class LocalSession:
    """Rank 0 of a world of 1, in this process. With ``folder`` every reported state is written there
    (replacing the previous checkpoint atomically) and ``restore`` resumes from it; without one the
    last reported state is kept as given (nothing to lose in-process, so no copy is made: the loop
    reports its final state last). ``on_report`` sees every row (progress lines)."""

    def __init__(
        self,
        folder: str | Path | None = None,
        device: str = "cpu",
        on_report: Callable[[dict], None] | None = None,
    ):
        self.rank, self.world_size, self.device = 0, 1, device
        self.folder = Path(folder) if folder else None
        self.on_report = on_report
        self.history: list[dict] = []
        self.state: dict | None = None
        self.saved = 0  # rows covered by the last checkpoint

    def report(self, metrics: dict[str, float], state: dict | None = None) -> None:
        row = {k: float(v) for k, v in metrics.items()}
        self.history.append(row)
        if self.on_report is not None:
            self.on_report(row)
        if state is None:
            return
        self.state, self.saved = state, len(self.history)
        if self.folder is not None:
            tmp = self.folder.with_name(self.folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            save_checkpoint(tmp, state, self.history)
            old = self.folder.with_name(self.folder.name + ".old")
            if self.folder.exists():
                os.replace(self.folder, old)
            os.replace(tmp, self.folder)
            shutil.rmtree(old, ignore_errors=True)

    def restore(self) -> dict | None:
        if self.folder is None or not (self.folder / STATE_FILE).is_file():
            return None
        self.state, self.history = load_checkpoint(self.folder)
        self.saved = len(self.history)
        return self.state

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def result(self) -> tuple[dict | None, list[dict]]:
        """The last checkpointed state and the rows up to it."""
        return self.state, self.history[: self.saved]


def run_local(
    loop_fn: LoopFn,
    config: dict,
    folder: str | Path | None = None,
    device: str = "cpu",
    on_report: Callable[[dict], None] | None = None,
) -> tuple[dict | None, list[dict]]:
    """``loop_fn`` in this process: (the last reported state, the metric rows up to it)."""
    session = LocalSession(folder, device, on_report)
    loop_fn(session, config)
    return session.result()
