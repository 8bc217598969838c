"""Progress: a bar with rate and ETA on a terminal, plain periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

log = logging.getLogger("stratum.progress")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Thread-safe counter of finished images that reports itself."""

    def __init__(self, total: int, *, every: float = 30.0, stream: TextIO | None = None,
                 tty: bool | None = None, label: str = "images"):
        self.total = total
        self.every = every
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.label = label
        self.count = 0
        self.work = 0  # images that needed work (the rate counts only these)
        self.start = time.monotonic()
        self._last_report = self.start
        self._lock = threading.Lock()
        self._halted = False

    def halt(self) -> None:
        """The run is stopping on an error: report nothing more (no misleading 100%)."""
        with self._lock:
            self._halted = True
            if self.tty:
                self.stream.write("\n")

    def advance(self, n: int = 1, *, worked: bool = True) -> None:
        with self._lock:
            if self._halted:
                return
            self.count += n
            self.work += n if worked else 0
            now = time.monotonic()
            interval = 0.2 if self.tty else self.every
            if now - self._last_report >= interval or self.count >= self.total:
                self._last_report = now
                self._report(now)

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        rate = self.work / elapsed if elapsed > 0 else 0.0
        remaining = self.total - self.count
        eta = _duration(remaining / rate) if rate > 0 else "--:--"
        pct = 100.0 * self.count / self.total if self.total else 100.0
        return f"{self.count}/{self.total} {self.label} ({pct:5.1f}%) {rate:.2f} img/s ETA {eta}"

    def _report(self, now: float) -> None:
        if self.tty:
            width = 24
            filled = int(width * self.count / self.total) if self.total else width
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.line(now)}")
            if self.count >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        else:
            log.info("progress %s", self.line(now))
