"""Ctrl-C that always works.

Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread is,
also inside an MLflow/SQLAlchemy commit, inside ``ray.init`` or ``ray.shutdown``. Interrupted
there, the clean-up that follows (mark runs KILLED, disconnect from Ray) can block, e.g. on a
sqlite write lock the interrupted transaction still holds, and the driver looks dead while it
waits. So the handler here only *records* the request; the driver raises
``KeyboardInterrupt`` at safe points (``INTERRUPT.check()``: between set-up phases, in every
turn of the executor loop, at most 0.5 s apart, and of Tune's loop in a search, 0.1 s apart).
``pipelines.run.lifecycle`` installs the handler and does the clean-up. A watchdog guarantees
the promise anyway: if clean-up has not finished ``grace_s`` seconds after Ctrl-C, the process
exits with code 130; a second Ctrl-C exits at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


class Interrupt:
    def __init__(self, grace_s: float = 8.0):
        self.grace_s = grace_s
        self.requested = False
        self._installed = False

    def install(self) -> None:
        """Take over SIGINT (main thread only; a no-op elsewhere, e.g. inside a Ray worker)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handler)
            self._installed = True

    def _handler(self, signum, frame) -> None:  # noqa: ARG002 - the signal module's signature
        if self.requested:
            os._exit(130)
        self.requested = True
        threading.Thread(target=self._watchdog, name="slimray-interrupt", daemon=True).start()

    def _watchdog(self) -> None:
        threading.Event().wait(self.grace_s)
        sys.stderr.write(f"interrupted: clean-up took over {self.grace_s:.0f} s; exiting now\n")
        sys.stderr.flush()
        os._exit(130)

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` here if Ctrl-C was pressed."""
        if self.requested:
            raise KeyboardInterrupt


INTERRUPT = Interrupt()
