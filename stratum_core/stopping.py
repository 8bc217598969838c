"""Stopping a run cleanly: a thread-safe stop request, and SIGINT/SIGTERM handlers that make one.

`engine.run(..., stop=request)` checks the request between images: it takes no new images,
finishes the writes in flight (at most `STOP_GRACE_S` seconds), saves the run record and raises
`RunInterrupted` carrying the summary. Any thread may call `request.request(...)` (a Dagster
termination hook, a test); `stop_on_signals` wires the process signals to it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator

STOP_GRACE_S = 5.0  # how long a stopping run waits for the batches and writes already in flight
SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopRequest:
    """Ask a running engine to stop cleanly (thread-safe; the first request wins)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self.exit_code = 130

    def request(self, reason: str = "stop requested", exit_code: int = 130) -> None:
        if not self._event.is_set():
            self.reason, self.exit_code = reason, exit_code
            self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest, exit_now: Callable[[int], None] = os._exit) -> Iterator[StopRequest]:
    """While inside: the first SIGINT/SIGTERM requests a clean stop, a second one exits at once.

    Signal handlers can only be set from the main thread; elsewhere (a Dagster step in a thread)
    this does nothing and the caller's own handling stays in place. The previous handlers are restored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, frame) -> None:
        code = SIGNAL_EXIT_CODES.get(signum, 128 + signum)
        name = signal.Signals(signum).name
        if stop.requested:
            sys.stderr.write(f"\n{name} again: stopping now\n")
            sys.stderr.flush()
            exit_now(code)
            return
        # No logging here: a handler runs between two bytecodes of the main thread, which may hold
        # the logging lock; the engine logs the stop when it sees it.
        stop.request(f"{name} received", code)

    previous = {s: signal.signal(s, handle) for s in SIGNAL_EXIT_CODES}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
