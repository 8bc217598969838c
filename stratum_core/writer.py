"""The writer pool: a few threads that write outcomes, each image's entries always on one thread, in order.

File writes and numpy's value checks release the GIL, so a second writer thread keeps the GPU
lane fed where one thread cannot. Routing every entry of an image to the same thread keeps that
image's writes in the order they were queued (metadata.json before its other artifacts), and
each thread's queue is bounded, so memory stays bounded however far the lanes run ahead.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from typing import Any, Callable, Iterable, Sequence

from stratum_core.artifacts import Artifact
from stratum_core.buckets import BUCKETS

MAX_WRITERS = 4
BYTES_PER_WRITER = 4 * 2 ** 20  # about one thread per 4 MiB written per image


def writer_count(artifacts: Iterable[Artifact], requested: int | None = None,
                 cpus: int | None = None) -> int:
    """Writer threads for a run that writes `artifacts` per image: `requested`, else one per
    BYTES_PER_WRITER of the largest bucket's arrays, at most MAX_WRITERS and the CPU count."""
    if requested is not None:
        return max(1, requested)
    per_image = max(image_bytes(artifacts, b) for b in BUCKETS)
    return max(1, min(MAX_WRITERS, cpus or os.cpu_count() or 1, math.ceil(per_image / BYTES_PER_WRITER)))


def image_bytes(artifacts: Iterable[Artifact], bucket: Any) -> int:
    """Bytes of the npy artifacts of one image of `bucket` (text and JSON count as nothing)."""
    import numpy as np

    return sum(math.prod(a.shape(bucket)) * np.dtype(a.dtype).itemsize
               for a in artifacts if a.kind == "npy" and a.shape is not None)


class WriterPool:
    """`threads` threads each running `loop(q)` over its own bounded queue until it gets `stop`.

    `put(entry)` (entry[0] is the image id) has the signature of `queue.Queue.put`, so the lanes
    cannot tell the pool from a single writer's queue; `close()` is the one way to stop it: every
    entry queued before it is written, then the threads end.
    """

    def __init__(self, loop: Callable[[queue.Queue], None], threads: int, capacity: int, stop: Any,
                 name: str = "stratum-writer"):
        self._queues: Sequence[queue.Queue] = [queue.Queue(maxsize=max(1, capacity // threads))
                                              for _ in range(threads)]
        self._stop = stop
        self._threads = [threading.Thread(target=loop, args=(q,), name=f"{name}-{i}", daemon=True)
                         for i, q in enumerate(self._queues)]
        self._closed = False
        for t in self._threads:
            t.start()

    @property
    def size(self) -> int:
        return len(self._threads)

    def put(self, entry: Sequence[Any], block: bool = True, timeout: float | None = None) -> None:
        """Queue `entry` on its image's writer (blocks while that writer's queue is full)."""
        self._queues[hash(entry[0]) % len(self._queues)].put(entry, block, timeout)

    def close(self, until: Callable[[], float | None] = lambda: None) -> None:
        """Drain: every writer finishes what was queued before this call, then its thread ends.

        `until()` gives a deadline (time.monotonic(); None: no limit): a stopping run waits for its
        writers only that long and leaves a busy one behind (each write is atomic).
        """
        if self._closed:
            return
        self._closed = True
        stopped = []
        try:
            for q, t in zip(self._queues, self._threads):
                put_until(q, self._stop, until)
                stopped.append(t)
        finally:  # a second Ctrl-C while queuing the stops: wait only for writers that got theirs
            for t in stopped:
                join_until(t, until)

    def alive(self) -> bool:
        """Whether any writer thread is still running."""
        return any(t.is_alive() for t in self._threads)


_POLL_S = 0.1  # how often a shutdown wait looks at its deadline (a stop may set one meanwhile)


def put_until(q: queue.Queue, entry: Any, until: Callable[[], float | None]) -> None:
    """Put, waiting at most until `until()` (time.monotonic(); None: as long as it takes)."""
    while True:
        deadline = until()
        wait = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
        if wait <= 0:
            return  # a stopping run's thread is still busy; it is left behind
        try:
            q.put(entry, timeout=wait)
            return
        except queue.Full:
            continue


def join_until(thread: threading.Thread, until: Callable[[], float | None]) -> None:
    """Join, waiting at most until `until()` (as put_until)."""
    while thread.is_alive():
        deadline = until()
        wait = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
        if wait <= 0:
            return
        thread.join(wait)
