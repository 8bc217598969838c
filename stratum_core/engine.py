"""The run engine: plan → decode in workers → batch by bucket → run pass lanes → background writer.

A pass never loops over images or writes files; this module does. Memory stays
bounded: decodes in flight, per-bucket batches and every queue have a fixed size.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from stratum_core import provenance
from stratum_core.artifacts import BY_NAME, pass_files, validate_value
from stratum_core.buckets import Bucket
from stratum_core.discover import DiscoveryError, SourceImage
from stratum_core.errors import (ConfigError, InfrastructureError, ItemError, RunInterrupted, StratumError,
                                 is_out_of_memory)
from stratum_core.intake import Decoded, decode
from stratum_core.outcomes import FAILED, OK, Outcome
from stratum_core.passes import build_passes
from stratum_core.passes.base import Item, Pass, PassOptions
from stratum_core.progress import Progress
from stratum_core.stopping import STOP_GRACE_S, StopRequest
from stratum_core.store import DISK_FULL_ERRNOS, FAILURE_PREFIX, Store, check_output_dir, sweep_dead_temp_files
from stratum_core.summary import Failure, PassStats, RunSummary
from stratum_core.writer import WriterPool, join_until, put_until, writer_count

log = logging.getLogger("stratum.engine")

_STOP = object()
DEFAULT_CPU_GROUP = 8
DEFAULT_GPU_GROUP = 32
MAX_AUTO_GROUP = 64  # a pass's own batch choice may grow the groups up to this (64 crops ≈ 200 MB)


class _Dropped(Exception):
    """An image left out of this run without a new failure (a stop came first, or it is already recorded)."""


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs besides the list of images."""

    output_dir: Path
    passes: tuple[str, ...]  # validated by passes.parse_passes (metadata first)
    options: PassOptions = field(default_factory=PassOptions)
    pass_configs: Mapping[str, Any] = field(default_factory=dict)
    workers: int = 2  # decode threads
    progress_every: float = 30.0  # seconds between plain progress lines
    writers: int | None = None  # writer threads (None: from the bytes each image writes)
    verbose: bool = False
    redo: str = "none"  # "stale" | "all": also recompute existing artifacts (provenance.plan)

    def __post_init__(self) -> None:
        if self.workers < 1:  # --batch-size is checked once, by PassOptions
            raise ConfigError("--workers must be at least 1")

    @property
    def group_size(self) -> int:
        """Images per same-bucket group handed to the lanes: `options.batch_size` when given, else by device
        (a pass splits a group into model batches of its `max_batch`; see `PassOptions.batch_size`)."""
        return self.options.batch_size or (DEFAULT_GPU_GROUP if self.options.is_cuda else DEFAULT_CPU_GROUP)


@dataclass
class _Planned:
    source: SourceImage
    todo: tuple[Pass, ...]
    on_disk: frozenset[str]


class _Batch:
    """Same-bucket items on their way through the lanes; the last lane to finish reports progress."""

    def __init__(self, items: list[Item], todo: dict[str, tuple[Pass, ...]], lanes: int, progress: Progress,
                 on_done=None):
        self.items = items
        self.todo = todo  # image id → passes to run
        self._pending = lanes
        self._lock = threading.Lock()
        self._progress = progress
        self._on_done = on_done  # called with the number of images once every lane is done

    def halt_progress(self) -> None:
        self._progress.halt()

    def lane_done(self) -> None:
        with self._lock:
            self._pending -= 1
            last = self._pending == 0
        if last:
            self._progress.advance(len(self.items))
            if self._on_done is not None:
                self._on_done(len(self.items))


def plan_lanes(passes: Sequence[Pass]) -> list[list[Pass]]:
    """Group passes into lanes that run concurrently.

    Each server-bound pass (caption) gets its own lane together with every pass that
    needs its artifacts (t5), so GPU passes never wait on a server; all other passes
    share the main lane in dependency order.
    """
    produced_by = {a.name: p for p in passes for a in p.artifacts}
    lane_of: dict[str, int] = {}
    lanes: list[list[Pass]] = [[]]
    for p in passes:
        upstream = {lane_of[produced_by[n].name] for n in p.reads if n in produced_by}
        if p.io_bound:
            lanes.append([p])
            lane_of[p.name] = len(lanes) - 1
        elif upstream - {0}:
            lane_of[p.name] = max(upstream)
            lanes[lane_of[p.name]].append(p)
        else:
            lane_of[p.name] = 0
            lanes[0].append(p)
    return [lane for lane in lanes if lane]


class Engine:
    """Runs a list of passes over a list of images; see `run`."""

    def __init__(self, config: RunConfig, passes: Sequence[Pass] | None = None, preloaded: bool = False,
                 recheck: bool = True):
        """`passes` default to those of `config`; `preloaded`: the caller already called their load()
        (benchmarks warm models up before the clock starts); `recheck`: skip an image whose artifacts
        another process wrote since planning (one listing per image and pass)."""
        self.config = config
        self.store = Store(config.output_dir)
        self.passes = list(passes) if passes is not None else build_passes(
            config.passes, config.options, config.pass_configs)
        self.lanes = plan_lanes(self.passes)
        # Planning runs once per image, so each pass's file names are computed once here.
        self._pass_files = [(p, pass_files(p.name)) for p in self.passes]
        self._loaded: set[str] = set()
        self._load_lock = threading.Lock()
        self._abort: BaseException | None = None
        self._stop = StopRequest()  # run(stop=...) replaces it with the caller's
        self._disk_full = False  # once set, the writer drops what is left instead of failing each file
        self._abandoned = False  # a stop's grace period is over: nothing more is written after the summary
        self.summary: RunSummary | None = None  # the current (or last) run's summary, also when run() raised
        self._metadata_pass = next((p for p in self.passes if p.name == "metadata"), None)
        self._recheck = recheck  # look for another run's artifacts again before each model call
        self._recheck = self._recheck and config.redo == "none"  # --redo: present files are to be replaced
        self._stats_lock = threading.Lock()
        # A lane with several threads must not run one pass on two batches at once unless
        # the pass is built for it (concurrency > 1): GPU passes stay one batch at a time.
        self._pass_locks = {p.name: threading.Lock() for p in self.passes}
        # Artifacts a later pass reads; only these stay on the item (not every 8 MB patch array).
        self._needed = frozenset(n for p in self.passes for n in p.reads)
        self._group_size = config.group_size  # grows to a loaded pass's chosen batch (see _note_loaded)
        if preloaded:
            for p in self.passes:
                self._note_loaded(p)

    # ------------------------------------------------------------------ planning
    def plan(self, source: SourceImage) -> _Planned:
        """Which passes this image still needs (one directory listing, no decode)."""
        on_disk = frozenset(self.store.listing(source.image_id))
        if any(name.endswith(".tmp") for name in on_disk):
            sweep_dead_temp_files(self.store.image_dir(source.image_id), on_disk)
        todo = tuple(p for p, files in self._pass_files if not files <= on_disk)
        todo = provenance.plan(self, source, on_disk, todo)  # --redo stale|all; marks what runs as pending
        return _Planned(source, todo, on_disk)

    # ------------------------------------------------------------------ run
    def run(self, images: Sequence[SourceImage], discovery_errors: Iterable[DiscoveryError] = (),
            progress: Progress | None = None, stop: StopRequest | None = None) -> RunSummary:
        """Process `images`; return the summary (also kept as `self.summary`, even when this raises).

        `stop`: once another thread requests it, no new image is started, the batches and writes in
        flight get `STOP_GRACE_S` seconds to finish, and RunInterrupted (carrying the summary) is raised.
        An exception raised in this thread (KeyboardInterrupt, Dagster's interrupt on terminate) stops
        the run the same way and is re-raised. An infrastructure error (dead server, full disk) is raised
        once the run has stopped, with `summary.infrastructure_error` set.
        """
        for p in self.passes:
            p.check_requirements()
        for p in self.passes:
            if p.io_bound:  # no weights to load: check the server now, before any image is touched
                self._ensure_loaded(p)
        self._stop = stop or self._stop  # a request_stop() made before run() still counts
        summary = RunSummary(total_images=len(images), passes={p.name: PassStats() for p in self.passes},
                             discovery_errors=list(discovery_errors))
        self.summary = summary
        progress = progress or Progress(len(images), every=self.config.progress_every)
        started = time.monotonic()
        lane_queues = [queue.Queue(maxsize=4) for _ in self.lanes]
        writer = self._start_writers(summary)
        lane_threads = [threading.Thread(target=self._lane_loop, args=(lane, q, writer, summary),
                                         name=f"stratum-lane-{i}-{j}", daemon=True)
                        for i, (lane, q) in enumerate(zip(self.lanes, lane_queues))
                        for j in range(self.lane_parallelism(lane))]
        for t in lane_threads:
            t.start()
        interrupted = False
        try:
            self._feed(images, lane_queues, summary, progress)
        except BaseException as exc:  # Ctrl-C or a load failure: lanes drop what is still queued
            self._abort = self._abort or exc
            interrupted = not isinstance(exc, Exception)  # KeyboardInterrupt and the like: stop cleanly
            summary.stopped = f"interrupted ({type(exc).__name__})" if interrupted else str(exc)
            if isinstance(exc, StratumError):
                summary.infrastructure_error = str(exc)
            progress.halt()
            raise
        finally:
            stopping = interrupted or self._stop.requested
            if stopping:
                log.info("stopping: finishing the writes in flight (at most %.0f s)", STOP_GRACE_S)
            all_stopped = self._shut_down(lane_threads, lane_queues, writer, STOP_GRACE_S if stopping else None)
            for p in self.passes:
                if p.name in self._loaded:
                    summary.provenance[p.name] = p.provenance()
                if all_stopped:  # a lane still inside a pass must not have it closed under it
                    p.close()
            summary.elapsed = time.monotonic() - started
        return self._finish(summary, progress)

    def _finish(self, summary: RunSummary, progress: Progress) -> RunSummary:
        """Raise what stopped the run, with the summary saying so; else return the summary."""
        if self._abort is not None:
            summary.stopped = summary.stopped or str(self._abort)
            if isinstance(self._abort, StratumError):
                summary.infrastructure_error = str(self._abort)
            raise self._abort
        if self._stop.requested and summary.images_left:
            progress.halt()
            summary.stopped = self._stop.reason
            raise RunInterrupted(self._stop.reason, self._stop.exit_code, summary)
        return summary

    def request_stop(self, reason: str = "stop requested", exit_code: int = 130) -> None:
        """Stop the current run cleanly (from any thread); `run` then raises RunInterrupted."""
        self._stop.request(reason, exit_code)

    def _shut_down(self, lane_threads: list[threading.Thread], lane_queues: list[queue.Queue],
                   writer: WriterPool, grace: float | None) -> bool:
        """Stop the lanes, then the writers; True when every thread has ended.

        With `grace` (a stop): batches no lane has started are dropped, and threads still busy after
        `grace` seconds are left behind (daemons; each write is atomic, so at most a temp file is left,
        which the next run sweeps).
        """
        deadline = [None if grace is None else time.monotonic() + grace]

        def until() -> float | None:
            """The deadline; a stop requested while this waits (a hung server) starts one too."""
            if deadline[0] is None and self._stop.requested:
                log.info("stopping: finishing the writes in flight (at most %.0f s)", STOP_GRACE_S)
                deadline[0] = time.monotonic() + STOP_GRACE_S
                for q in lane_queues:
                    _drain(q)
            return deadline[0]

        if grace is not None:
            for q in lane_queues:
                _drain(q)
        try:
            for lane, q in zip(self.lanes, lane_queues):
                for _ in range(self.lane_parallelism(lane)):
                    put_until(q, _STOP, until)
            for t in lane_threads:
                join_until(t, until)
        finally:  # even a second Ctrl-C must not strand the writers on empty queues
            writer.close(until)
        all_stopped = not writer.alive() and not any(t.is_alive() for t in lane_threads)
        self._abandoned = not all_stopped  # what a thread left behind finishes now is not written
        return all_stopped

    def lane_parallelism(self, lane: Sequence[Pass]) -> int:
        """Batches a lane works on at once: one, or for a concurrent pass (caption) enough batches that
        its request slots stay full while finished batches are written and the next ones prepared."""
        wanted = max(p.concurrency for p in lane)
        return 1 if wanted <= 1 else 1 + math.ceil(2 * wanted / self.config.group_size)

    def _feed(self, images: Sequence[SourceImage], lane_queues: list[queue.Queue], summary: RunSummary,
              progress: Progress) -> None:
        """Main thread: plan, decode (in workers), group by bucket, hand batches to the lanes."""
        buckets: dict[Bucket, list[tuple[Item, tuple[Pass, ...]]]] = defaultdict(list)
        prefetch = max(2 * self.config.workers, 2 * self.config.group_size)
        with ThreadPoolExecutor(self.config.workers, thread_name_prefix="stratum-decode") as pool:
            for planned, future in _bounded_map(pool, self._prepare, self._planned(images, summary, progress),
                                                prefetch):
                if self._halting:
                    pool.shutdown(wait=True, cancel_futures=True)  # decodes not started are not started
                    break
                try:
                    item = future.result()
                except ItemError as exc:
                    self._record_decode_failure(planned, exc, summary)
                    self._count_finished(1)
                    progress.advance()
                    continue
                except _Dropped:
                    self._count_finished(1)
                    progress.advance()
                    continue
                group = buckets[item.bucket]
                group.append((item, planned.todo))
                if len(group) >= self._group_size:
                    self._dispatch(buckets.pop(item.bucket), lane_queues, progress)
            for group in buckets.values():
                if not self._halting:
                    self._dispatch(group, lane_queues, progress)

    @property
    def _halting(self) -> bool:
        """Take no new work: an error stopped the run, or a stop was requested."""
        return self._abort is not None or self._stop.requested

    def _count_finished(self, n: int) -> None:
        with self._stats_lock:
            self.summary.finished_images += n

    def _record_decode_failure(self, planned: _Planned, exc: ItemError, summary: RunSummary) -> None:
        """An image that no longer decodes: the failure belongs to metadata when it has none yet,
        else to each pass that could not run (a later success of that pass clears its record)."""
        names = [p.name for p in planned.todo]
        for name in ["metadata"] if "metadata" in names else names:
            self._record(summary, Failure(planned.source.image_id, name, exc.reason, exc.message))
            self._record_on_disk(planned.source.image_id, name, exc.reason, exc.message)

    def _planned(self, images: Sequence[SourceImage], summary: RunSummary,
                 progress: Progress) -> Iterator[_Planned]:
        """Images with work left; finished ones are counted as existing without a decode.

        This loop runs once per image even on a no-op re-run of millions, so it stays lean:
        `existing` is only ever written by this thread (no lock), and finished images are
        reported to the progress counter in chunks.
        """
        all_stats = [summary.passes[p.name] for p in self.passes]
        finished = 0
        for source in images:
            if self._stop.requested:
                break
            planned = self.plan(source)
            if not planned.todo:
                for stats in all_stats:
                    stats.existing += 1
                finished += 1
                if finished >= 256:
                    self._count_finished(finished)
                    progress.advance(finished, worked=False)
                    finished = 0
                continue
            for p, stats in zip(self.passes, all_stats):
                if p not in planned.todo:
                    stats.existing += 1
            if finished:
                self._count_finished(finished)
                progress.advance(finished, worked=False)
                finished = 0
            summary.work_images += 1
            yield planned
        if finished:
            self._count_finished(finished)
            progress.advance(finished, worked=False)

    def _prepare(self, planned: _Planned) -> Item:
        """Worker thread: decode and crop (or, for passes that never look at pixels, read the bucket)."""
        if self._halting:
            raise _Dropped()  # a stop arrived while this image waited for a worker
        if not any(p.uses_image for p in planned.todo) and BY_NAME["metadata"].filename in planned.on_disk:
            try:
                metadata = self.store.read(planned.source.image_id, BY_NAME["metadata"])
                decoded = Decoded(None, metadata["width"], metadata["height"],
                                  Bucket.parse(metadata["aspect_bucket"]))
                return Item(planned.source, decoded)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                pass  # unreadable metadata.json (deleted or damaged since planning): decode instead
        try:
            item = Item(planned.source, decode(planned.source.path))
        except ItemError:
            raise
        except Exception as exc:  # a decoder bug or MemoryError fails this image only
            raise ItemError("decode_error", f"{type(exc).__name__}: {exc}") from exc
        if FAILURE_PREFIX + BY_NAME["metadata"].filename in planned.on_disk:  # the source decodes again
            self.store.clear_failure(planned.source.image_id, "metadata")
        self._write_metadata_first(planned, item)
        return item

    def _write_metadata_first(self, planned: _Planned, item: Item) -> None:
        """Worker thread: write a newly decoded image's metadata.json before the image joins a batch.

        So a killed run never leaves an artifact without its metadata.json, whatever order the
        writer(s) use, and an image whose metadata cannot be written gets no other artifact
        (ItemError "write_error"; a full disk also stops the run).
        """
        p = self._metadata_pass
        if p is None or p not in planned.todo:
            return
        for q in planned.todo:  # missing weights stop the run before the first file is written
            if q.name not in self._loaded:
                self._ensure_loaded(q)
        [outcome] = p.run_batch([item])
        try:
            self._write_outcome(item.image_id, item.bucket, p, outcome, self.summary)
        except Exception as exc:
            already_full = self._disk_full
            self._note_write_error(exc)
            if already_full:  # the run is stopping on a full disk: not one more failure per image
                raise _Dropped() from exc
            raise ItemError("write_error", f"{type(exc).__name__}: {exc}") from exc
        planned.todo = tuple(q for q in planned.todo if q is not p)
        if outcome.status != OK or not self.store.path(item.image_id, BY_NAME["metadata"]).exists():
            raise _Dropped()  # its failure is recorded; without metadata nothing else is written

    def _note_write_error(self, exc: BaseException) -> None:
        """A full (or read-only) disk stops the run: every further write would fail the same way."""
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS and not self._disk_full:
            self._disk_full = True
            self._abort = self._abort or InfrastructureError(
                f"cannot write to {self.config.output_dir}: {exc.strerror or exc}; free some space (or make "
                "it writable) and re-run the same command to resume")
            log.debug("stopping the run: %s", exc)

    def _dispatch(self, group: list[tuple[Item, tuple[Pass, ...]]], lane_queues: list[queue.Queue],
                  progress: Progress) -> None:
        # Load what this batch needs here, before any lane sees it: missing weights or a bad model
        # file stop the run before a single artifact of the batch is written.
        for p in dict.fromkeys(p for _, todo in group for p in todo):
            self._ensure_loaded(p)
        batch = _Batch([item for item, _ in group], {item.image_id: todo for item, todo in group},
                       len(self.lanes), progress, self._count_finished)
        for q in lane_queues:
            while not self._halting:
                try:
                    q.put(batch, timeout=0.5)
                    break
                except queue.Full:
                    continue

    # ------------------------------------------------------------------ lanes
    def _lane_loop(self, lane: list[Pass], lane_queue: queue.Queue, write_queue: queue.Queue,
                   summary: RunSummary) -> None:
        while True:
            batch = lane_queue.get()
            if batch is _STOP:
                return
            try:
                for p in lane:
                    if self._halting:  # a stop leaves the passes this batch has not started
                        break
                    self._run_pass(p, batch, write_queue, summary)
                self._drop_scratch(lane, batch)
            except BaseException as exc:  # infrastructure failure: stop the whole run (the CLI prints it once)
                log.debug("lane stopped: %s", exc)
                self._abort = self._abort or exc
                batch.halt_progress()
            finally:
                batch.lane_done()

    @staticmethod
    def _drop_scratch(lane: Sequence[Pass], batch: _Batch) -> None:
        """Free what this lane's passes shared (e.g. a GPU tensor) before slower lanes finish the batch."""
        keys = {k for p in lane for k in p.scratch_keys}
        for item in batch.items:
            for key in keys:
                item.scratch.pop(key, None)

    def _run_pass(self, p: Pass, batch: _Batch, write_queue: queue.Queue, summary: RunSummary) -> None:
        items = self._not_done_elsewhere(p, [it for it in batch.items if p in batch.todo[it.image_id]], summary)
        ready: list[Item] = []
        for item in items:
            missing, unreadable = self._fill_inputs(p, item)
            if missing:
                outcome = Outcome.skipped("missing_input", f"needs {', '.join(missing)}")
                write_queue.put((item.image_id, item.bucket, p, outcome))
            elif unreadable:
                write_queue.put((item.image_id, item.bucket, p, Outcome.failed("bad_input", unreadable)))
            else:
                ready.append(item)
        if not ready:
            return
        start = time.monotonic()
        try:
            if p.concurrency > 1:
                outcomes = p.run_batch(ready)
            else:
                with self._pass_locks[p.name]:
                    outcomes = p.run_batch(ready)
        except InfrastructureError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                raise InfrastructureError(f"{p.name}: out of GPU memory even at batch 1 ({exc})") from exc
            log.exception("%s failed on a batch of %d", p.name, len(ready))
            outcomes = [Outcome.failed("inference_error", f"{type(exc).__name__}: {exc}")] * len(ready)
        with self._stats_lock:
            summary.passes[p.name].seconds += time.monotonic() - start
        for item, outcome in zip(ready, outcomes):
            if outcome.status == OK:
                item.inputs.update((k, v) for k, v in outcome.values.items() if k in self._needed)
                if outcome.note:
                    with self._stats_lock:
                        summary.passes[p.name].notes.add(outcome.note)
            write_queue.put((item.image_id, item.bucket, p, outcome))

    def _not_done_elsewhere(self, p: Pass, items: list[Item], summary: RunSummary) -> list[Item]:
        """The items whose artifacts of `p` are still missing, checked again just before the model call:
        another run on the same output may have written them since this run planned the image
        (those count as existing). One directory listing per item, next to a model call."""
        if not self._recheck:
            return items
        files = pass_files(p.name)
        todo = [it for it in items if not files <= self.store.listing(it.image_id)]
        if len(todo) < len(items):
            with self._stats_lock:
                summary.passes[p.name].existing += len(items) - len(todo)
        return todo

    def _fill_inputs(self, p: Pass, item: Item) -> tuple[list[str], str]:
        """Put each artifact `p` needs into item.inputs (from this run or disk).

        Returns the missing file names, and why an input that exists cannot be read (a 0-byte or
        damaged file fails this image only; `verify --fix` removes it so the next run redoes it).
        """
        missing, unreadable = [], ""
        for name in p.reads:
            if name in item.inputs:
                continue
            artifact = BY_NAME[name]
            try:
                item.inputs[name] = self.store.read(item.image_id, artifact)
            except FileNotFoundError:
                missing.append(artifact.filename)
            except Exception as exc:  # EOFError, a bad npy header, undecodable UTF-8, …
                unreadable = f"{artifact.filename} is unreadable ({type(exc).__name__}: {exc})"
        return missing, unreadable

    def _ensure_loaded(self, p: Pass) -> None:
        with self._load_lock:
            if p.name not in self._loaded:
                log.info("loading %s", p.name)
                p.load()
                self._note_loaded(p)

    def _note_loaded(self, p: Pass) -> None:
        self._loaded.add(p.name)
        if self.config.options.batch_size is None and p.chosen_batch:
            # A pass that picked its batch from free GPU memory gets groups that large, so
            # the engine's default group never caps its choice.
            self._group_size = max(self._group_size, min(p.chosen_batch, MAX_AUTO_GROUP))

    # ------------------------------------------------------------------ writer
    def _start_writers(self, summary: RunSummary) -> WriterPool:
        """The writer threads (see writer.py); `put` as on a queue, `close()` drains them.

        Entries hold arrays (a 1 MP normal map is 6 MB): a few batches of slack in all is enough.
        """
        threads = writer_count((a for p in self.passes for a in p.artifacts), self.config.writers)
        return WriterPool(lambda q: self._write_loop(q, summary), threads, 4 * self.config.group_size, _STOP)

    def _write_loop(self, write_queue: queue.Queue, summary: RunSummary) -> None:
        while True:
            entry = write_queue.get()
            if entry is _STOP:
                return
            image_id, bucket, p, outcome = entry
            if self._disk_full or self._abandoned:
                continue  # the run is stopping: what is left would only fail the same way
            try:
                self._write_outcome(image_id, bucket, p, outcome, summary)
            except Exception as exc:  # permissions, a bad value: lose this artifact, keep going
                # (an escaping exception would end this thread and leave the lanes blocked on a full queue)
                self._note_write_error(exc)
                message = f"{type(exc).__name__}: {exc}"
                self._record(summary, Failure(image_id, p.name, "write_error", message))
                self._record_on_disk(image_id, p.name, "write_error", message)

    def _write_outcome(self, image_id: str, bucket: Bucket, p: Pass, outcome: Outcome,
                       summary: RunSummary) -> None:
        if outcome.status == OK:
            problems = [f"{a.filename}: {problem}" for a in p.artifacts
                        if (problem := validate_value(a, outcome.values.get(a.name), bucket))]
            if problems:  # the artifact table drives writing too: nothing invalid gets a final name
                outcome = Outcome.failed("inference_error", "invalid output: " + "; ".join(problems))
        if outcome.status == OK:
            for artifact in p.artifacts:
                self.store.write(image_id, artifact, outcome.values[artifact.name])
            try:
                provenance.record(self.store, image_id, p, outcome)
            except OSError as exc:  # a full disk: the artifacts are written, their record stays pending (stale)
                self._note_write_error(exc)
            self.store.clear_failure(image_id, p.name)
            with self._stats_lock:
                summary.passes[p.name].done += 1
            if self.config.verbose:
                log.info("%s %s ok", image_id, p.name)
        elif outcome.status == FAILED:
            self._record(summary, Failure(image_id, p.name, outcome.reason, outcome.message))
            self.store.record_failure(image_id, p.name, outcome.reason, outcome.message)
        else:
            with self._stats_lock:
                summary.passes[p.name].skipped.add(outcome.reason)
            if self.config.verbose:
                log.info("%s %s skipped: %s", image_id, p.name, outcome.message)

    def _record_on_disk(self, image_id: str, pass_name: str, reason: str, message: str) -> None:
        """Best effort: with the disk full, the failure is still in the run summary."""
        try:
            self.store.record_failure(image_id, pass_name, reason, message)
        except (OSError, ValueError) as exc:
            log.debug("cannot record the failure of %s [%s]: %s", image_id, pass_name, exc)

    def _record(self, summary: RunSummary, failure: Failure) -> None:
        with self._stats_lock:
            summary.add_failure(failure)
        log.log(logging.WARNING if self.config.verbose else logging.DEBUG, "%s [%s] %s: %s",
                failure.image, failure.pass_name, failure.reason, failure.message)


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def _bounded_map(pool: ThreadPoolExecutor, fn, items: Iterable, limit: int) -> Iterator[tuple[Any, Future]]:
    """Submit fn(item) for each item with at most `limit` in flight; yield (item, future) in order."""
    pending: list[tuple[Any, Future]] = []
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= limit:
            yield pending.pop(0)
    while pending:
        yield pending.pop(0)


def run(config: RunConfig, images: Sequence[SourceImage], discovery_errors: Iterable[DiscoveryError] = (),
        progress: Progress | None = None, stop: StopRequest | None = None) -> RunSummary:
    """Process `images` with the passes of `config`; save the run record and return the summary.

    The output folder is checked first: one that cannot be written is a ConfigError before any decode.
    Stopping: pass a `stopping.StopRequest` and call its `request(reason, exit_code)` from any thread
    (or wrap the call in `stopping.stop_on_signals`, main thread only): the run takes no new images,
    finishes the writes in flight, saves the record and raises `errors.RunInterrupted` (`.summary`,
    `.exit_code`). An exception raised into this thread (KeyboardInterrupt, an orchestrator's interrupt)
    stops it the same way and propagates. An error that stops a started run (a dead caption server, a
    full disk) propagates with the saved summary as `exc.summary`. A run record that cannot be saved
    (a full disk) is reported in `summary.record_error` (exit code 2), never raised.
    """
    check_output_dir(config.output_dir)
    engine = Engine(config)
    try:
        summary = engine.run(images, discovery_errors, progress, stop)
    except BaseException as exc:
        if engine.summary is not None:
            save_record(engine.summary, config.output_dir)
            if isinstance(exc, StratumError) and exc.summary is None:
                exc.summary = engine.summary
        raise
    save_record(summary, config.output_dir)
    return summary


def save_record(summary: RunSummary, output_dir: Path) -> Path | None:
    """Save the run record; on failure (disk full) say why in `summary.record_error` instead of raising."""
    try:
        return summary.save(Store(output_dir).state_dir)
    except OSError as exc:
        summary.record_error = f"{type(exc).__name__}: {exc}"
        return None
