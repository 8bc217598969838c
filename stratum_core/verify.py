"""`stratum verify`: every artifact parses and has the shape, dtype and values the table says."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

import numpy as np

from stratum_core.artifacts import ARTIFACTS, BY_NAME, Artifact, validate_value
from stratum_core.buckets import Bucket
from stratum_core.discover import iter_image_dirs
from stratum_core.provenance import check_record
from stratum_core.store import Store, is_temp_file

# A temp file this old cannot belong to a live writer (each write takes well under a minute).
STALE_TEMP_SECONDS = 600


@dataclass(frozen=True)
class Problem:
    image_id: str
    filename: str
    message: str


@dataclass
class VerifyReport:
    images: int = 0
    files: int = 0
    problems: list[Problem] = field(default_factory=list)
    stale_temp_files: list[Path] = field(default_factory=list)
    fixed: int = 0
    # Image folders with artifacts but no metadata.json: unfinished, not broken (`stratum process`
    # writes the metadata again; a run writes it before any other artifact, so only a deletion or an
    # older version leaves this).
    unfinished: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"checked {self.files} files in {self.images} image directories: "
                 f"{'OK' if self.ok else f'{len(self.problems)} problems'}"]
        lines.extend(f"  {p.image_id}/{p.filename}: {p.message}" for p in self.problems[:200])
        if len(self.problems) > 200:
            lines.append(f"  … {len(self.problems) - 200} more")
        if self.unfinished:
            lines.append(f"  {len(self.unfinished)} unfinished image folders (artifacts but no metadata.json, e.g. "
                         f"{self.unfinished[0]}): not damaged; `stratum process` completes them")
        if self.stale_temp_files:
            lines.append(f"  {len(self.stale_temp_files)} leftover temp files from interrupted runs")
        if self.fixed:
            lines.append(f"deleted {self.fixed} bad files; `stratum process` will redo them")
        return "\n".join(lines)


def check_image(store: Store, image_id: str, names: Iterable[str],
                only: Iterable[str] | None = None) -> list[Problem]:
    """Problems of one image directory (its metadata gives the bucket for shape checks).

    `only`: check just these file names (and metadata.json, for the bucket), e.g. one pass's
    artifacts; the others are not even read.
    """
    problems: list[Problem] = []
    wanted = None if only is None else {*only, BY_NAME["metadata"].filename}
    present = [a for a in ARTIFACTS if a.filename in names and (wanted is None or a.filename in wanted)]
    bucket: Bucket | None = None
    # Without metadata.json (an unfinished folder, see VerifyReport.unfinished) shapes cannot be
    # checked, but dtypes, parsing and value ranges still are.
    for artifact in present:
        try:
            value = read_value(store, image_id, artifact)
        except (OSError, ValueError, UnicodeDecodeError, EOFError) as exc:
            problems.append(Problem(image_id, artifact.filename, f"cannot be read: {exc}"))
            continue
        if artifact is BY_NAME["metadata"]:
            bucket = _bucket_of(value, image_id, problems)
        problem = validate_value(artifact, value, bucket)
        if problem:
            problems.append(Problem(image_id, artifact.filename, problem))
    return problems


def _bucket_of(metadata: dict, image_id: str, problems: list[Problem]) -> Bucket | None:
    """The image's bucket, or None (a problem: the other artifacts' shapes cannot be checked)."""
    try:
        return Bucket.parse(metadata["aspect_bucket"])
    except (KeyError, ValueError, AttributeError):
        problems.append(Problem(image_id, BY_NAME["metadata"].filename,
                                f"no valid aspect_bucket ({metadata.get('aspect_bucket')!r} is not one of the 7 buckets)"))
        return None


def verify(output_dir: Path, fix: bool = False, image_ids: set[str] | None = None, workers: int = 1,
           progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check every artifact (or only those of `image_ids`); with `fix`, delete what is bad.

    `workers` > 1 checks image folders in that many processes (the walk stays in this one);
    `progress(n)` is called with the number of image folders checked so far, every few hundred.
    """
    store = Store(output_dir)
    report = VerifyReport()
    now = time.time()
    dirs = ((i, n) for i, n in iter_image_dirs(Path(output_dir)) if image_ids is None or i in image_ids)
    for image_id, names, problems, stale in _checked(str(output_dir), dirs, workers, now):
        report.images += 1
        report.files += sum(1 for a in ARTIFACTS if a.filename in names)
        report.problems.extend(problems)
        # A record that contradicts the files: reported, never deleted by --fix (it may be a hand edit).
        report.problems.extend(Problem(image_id, f, m) for f, m in check_record(store, image_id, names))
        report.stale_temp_files.extend(stale)
        if BY_NAME["metadata"].filename not in names and any(a.filename in names for a in ARTIFACTS):
            report.unfinished.append(image_id)
        if fix:
            report.fixed += _delete(store.image_dir(image_id) / p.filename for p in problems)
        if progress is not None and report.images % PROGRESS_EVERY == 0:
            progress(report.images)
    if fix:
        _delete(report.stale_temp_files)
    if progress is not None:
        progress(report.images)
    return report


def read_value(store: Store, image_id: str, artifact: Artifact) -> Any:
    """An artifact's value; an npy is memory-mapped (read once, by the checks, never copied)."""
    if artifact.kind == "npy":
        return np.load(store.path(image_id, artifact), mmap_mode="r", allow_pickle=False)
    return store.read(image_id, artifact)


PROGRESS_EVERY = 500  # image folders between progress calls
CHUNK = 64  # image folders per task handed to a worker process

Checked = tuple[str, set[str], list[Problem], list[Path]]  # image id, file names, problems, stale temp files


def _checked(root: str, dirs: Iterable[tuple[str, set[str]]], workers: int, now: float) -> Iterator[Checked]:
    """Each image folder checked, in walk order: here, or in `workers` processes a bounded way ahead.

    A dataset of a few chunks is checked here whatever `workers` says: starting processes costs more.
    """
    dirs = iter(dirs)
    first = list(itertools.islice(dirs, 2 * CHUNK))
    if workers <= 1 or len(first) < 2 * CHUNK:
        store = Store(Path(root))
        for image_id, names in itertools.chain(first, dirs):
            yield _check_one(store, image_id, names, now)
        return
    dirs = itertools.chain(first, dirs)
    import concurrent.futures
    import multiprocessing

    # spawn, not fork: the caller (a Dagster run, a threaded engine) may hold locks a fork would copy.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: list[concurrent.futures.Future] = []
        for chunk in _chunks(dirs, CHUNK):
            pending.append(pool.submit(_check_chunk, root, chunk, now))
            if len(pending) >= 4 * workers:  # memory stays bounded on 10M folders
                yield from pending.pop(0).result()
        for future in pending:
            yield from future.result()


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_chunk(root: str, chunk: list[tuple[str, set[str]]], now: float) -> list[Checked]:
    """Worker process: check a list of image folders."""
    store = Store(Path(root))
    return [_check_one(store, image_id, names, now) for image_id, names in chunk]


def _check_one(store: Store, image_id: str, names: set[str], now: float) -> Checked:
    problems = check_image(store, image_id, names)
    stale = [store.image_dir(image_id) / name for name in names
             if is_temp_file(name) and _age(store.image_dir(image_id) / name, now) > STALE_TEMP_SECONDS]
    return image_id, names, problems, stale


class ProgressLines:
    """A `progress` callback for verify: "verify: N image folders checked (R/s)" at most every `every` s."""

    def __init__(self, stream: TextIO, every: float = 30.0):
        self.stream = stream
        self.every = every
        self.start = self._last = time.monotonic()

    def __call__(self, checked: int) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        rate = checked / max(now - self.start, 1e-9)
        self.stream.write(f"verify: {checked} image folders checked ({rate:.0f}/s)\n")
        self.stream.flush()


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def _delete(paths: Iterable[Path]) -> int:
    n = 0
    for path in set(paths):
        try:
            os.unlink(path)
            n += 1
        except FileNotFoundError:
            pass
    return n

