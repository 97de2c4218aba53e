"""The live step table (rich) and the end-of-run summary.

On a terminal the table redraws in place; elsewhere (CI logs, pipes) each change of a step's
status is printed as one line, so logs stay readable.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

STYLE = {
    "pending": "dim",
    "running": "yellow",
    "cached": "cyan",
    "done": "green",
    "failed": "bold red",
    "skipped": "magenta",
}


def _duration(st) -> str:
    if not st.started:
        return ""
    return f"{(st.ended or time.time()) - st.started:6.1f}s"


def _trials(st) -> str:
    if not st.spec.is_sweep:
        return ""
    finished = sum(t.status in ("done", "cached", "failed") for t in st.trials)
    return f"{finished}/{len(st.trials)}"


def table(states: dict) -> Table:
    t = Table(title="slimray pipeline", expand=False)
    for col in ("step", "task", "status", "trials", "time", "node", "note"):
        t.add_column(col)
    for name, st in states.items():
        picked = st.spec.is_sweep and st.spec.select is not None and st.selected is not None
        sel = f" -> {st.trials[st.selected].label}" if picked else ""
        t.add_row(
            name,
            st.spec.task,
            f"[{STYLE[st.status]}]{st.status}[/]",
            _trials(st),
            _duration(st),
            ",".join(sorted(st.nodes)),
            (st.note or sel.strip())[:80],
        )
    return t


class Board:
    """A listener of the executor's step events (``pipelines.run.dag``): the live table on a
    terminal, one plain line per status change elsewhere (no ANSI escapes in logs)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.states: dict = {}
        self.live = (
            Live(console=self.console, refresh_per_second=4, transient=False, get_renderable=lambda: table(self.states))
            if self.console.is_terminal
            else None
        )
        self._seen: dict[str, str] = {}

    def on_event(self, event: str, st, trial) -> None:  # noqa: ARG002 - the listener signature
        self.states.setdefault(st.spec.name, st)
        self.update(self.states)

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)

    def update(self, states: dict) -> None:
        if self.live:
            self.live.refresh()
            return
        for name, st in states.items():
            key = f"{st.status}:{_trials(st)}"
            if self._seen.get(name) != key:
                self._seen[name] = key
                extra = f" ({_trials(st)})" if _trials(st) else ""
                note = f" - {st.note}" if st.note and st.status in ("failed", "skipped", "done") else ""
                self.console.print(f"{st.status:>8} {name}{extra}{note}", markup=False, highlight=False)


def store_line(uri: str, source: str) -> str:
    """The console's first line: the MLflow store this execution writes to, and why that one."""
    return f"MLflow store: {uri} (from {source})"
