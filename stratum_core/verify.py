"""`stratum verify`: every artifact parses and has the shape, dtype and values the table says."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from stratum_core.artifacts import ARTIFACTS, BY_NAME, validate_value
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

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"checked {self.files} files in {self.images} image directories: "
                 f"{'OK' if self.ok else f'{len(self.problems)} problems'}"]
        lines.extend(f"  {p.image_id}/{p.filename}: {p.message}" for p in self.problems[:200])
        if len(self.problems) > 200:
            lines.append(f"  … {len(self.problems) - 200} more")
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
    if present and BY_NAME["metadata"] not in present:
        problems.append(Problem(image_id, "metadata.json", "missing, so the shapes of the other artifacts cannot be "
                                                           "checked (`stratum process` rebuilds it)"))
    for artifact in present:
        try:
            value = store.read(image_id, artifact)
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
        problems.append(Problem(image_id, "metadata.json",
                                f"no valid aspect_bucket ({metadata.get('aspect_bucket')!r} is not one of the 7 buckets)"))
        return None


def verify(output_dir: Path, fix: bool = False, image_ids: set[str] | None = None) -> VerifyReport:
    """Check every artifact (or only those of `image_ids`); with `fix`, delete what is bad."""
    store = Store(output_dir)
    report = VerifyReport()
    now = time.time()
    for image_id, names in iter_image_dirs(Path(output_dir)):
        if image_ids is not None and image_id not in image_ids:
            continue
        report.images += 1
        report.files += sum(1 for a in ARTIFACTS if a.filename in names)
        problems = check_image(store, image_id, names)
        report.problems.extend(problems)
        # A record that contradicts the files: reported, never deleted by --fix (it may be a hand edit).
        report.problems.extend(Problem(image_id, f, m) for f, m in check_record(store, image_id, names))
        for name in names:
            path = store.image_dir(image_id) / name
            if is_temp_file(name) and _age(path, now) > STALE_TEMP_SECONDS:
                report.stale_temp_files.append(path)
        if fix:
            report.fixed += _delete(store.image_dir(image_id) / p.filename for p in problems)
    if fix:
        _delete(report.stale_temp_files)
    return report


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

