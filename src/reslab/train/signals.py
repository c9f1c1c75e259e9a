"""Stopping a run cleanly on SIGINT / SIGTERM: the trainer takes the signal up at the next step."""

from __future__ import annotations

import signal
from typing import Any


class StopOnSignal:
    """SIGINT/SIGTERM only record the signal (no I/O in the handler); the trainer takes it up at
    the next step boundary, writes a checkpoint and exits. A second Ctrl-C quits at once."""

    def __init__(self) -> None:
        self.pending, self.previous = "", {}

    def __enter__(self) -> StopOnSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # ignored by whoever started us (nohup, a background job): keep it so
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pending and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.pending = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            if handler is not None:  # None: a handler installed outside Python, cannot be put back
                signal.signal(sig, handler)
