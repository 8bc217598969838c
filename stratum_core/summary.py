"""Run statistics: per-pass counts with reasons, capped failure lists, the printed summary."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratum_core.discover import DiscoveryError
from stratum_core.outcomes import CappedCounter
from stratum_core.store import write_atomic

MAX_LISTED_FAILURES = 1000


@dataclass
class PassStats:
    done: int = 0
    existing: int = 0
    skipped: CappedCounter = field(default_factory=CappedCounter)
    failed: CappedCounter = field(default_factory=CappedCounter)
    seconds: float = 0.0  # time spent in this pass's run_batch
    notes: CappedCounter = field(default_factory=CappedCounter)  # successes worth counting, e.g. truncated captions

    def to_dict(self) -> dict[str, Any]:
        return {"done": self.done, "existing": self.existing, "skipped": sum(self.skipped.values()),
                "failed": sum(self.failed.values()), "skipped_reasons": dict(self.skipped),
                "failed_reasons": dict(self.failed), "seconds": round(self.seconds, 3), "notes": dict(self.notes)}


@dataclass(frozen=True)
class Failure:
    image: str
    pass_name: str
    reason: str
    message: str


@dataclass
class RunSummary:
    total_images: int
    passes: dict[str, PassStats]
    discovery_errors: list[DiscoveryError] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    provenance: dict[str, dict] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    elapsed: float = 0.0
    work_images: int = 0  # images that needed at least one pass
    finished_images: int = 0  # images whose every pass has an outcome (existing ones included)
    stopped: str = ""  # why the run ended before every image was finished ("" = it did not)
    infrastructure_error: str = ""  # what stopped it when that was not a request (disk full, dead server)
    record_error: str = ""  # why the run record could not be saved

    def add_failure(self, failure: Failure) -> None:
        self.passes[failure.pass_name].failed.add(failure.reason)
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append(failure)

    @property
    def failed_count(self) -> int:
        return len(self.discovery_errors) + sum(sum(s.failed.values()) for s in self.passes.values())

    @property
    def done_count(self) -> int:
        return sum(s.done for s in self.passes.values())

    @property
    def exit_code(self) -> int:
        """0 ok, 1 some images failed, 2 infrastructure error (a full disk, no run record)."""
        if self.infrastructure_error or self.record_error:
            return 2
        return 1 if self.failed_count else 0

    @property
    def images_left(self) -> int:
        return max(0, self.total_images - self.finished_images)

    @property
    def rate(self) -> float:
        """Images that needed work, per second of wall time."""
        return self.work_images / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_images": self.total_images, "work_images": self.work_images,
            "elapsed_s": round(self.elapsed, 3), "images_per_s": round(self.rate, 3),
            "failed": self.failed_count,
            "stopped": self.stopped, "images_left": self.images_left if self.stopped else 0,
            "infrastructure_error": self.infrastructure_error,
            "passes": {name: stats.to_dict() for name, stats in self.passes.items()},
            "discovery_errors": [vars(e) for e in self.discovery_errors],
            "failures": [vars(f) for f in self.failures],
            "provenance": self.provenance,
        }

    def format(self) -> str:
        """The human summary printed at the end of `stratum process`."""
        lines = [f"{self.total_images} images, {self.work_images} needed work, "
                 f"{self.elapsed:.1f}s ({self.rate:.2f} img/s)"]
        if self.total_images == 0 and not self.discovery_errors:
            lines.append("no images found (extensions: .jpg .jpeg .png .webp .bmp .tif .tiff)")
        elif self.work_images == 0 and not self.discovery_errors:
            lines.append("nothing to do: every requested artifact already exists")
        for name, s in self.passes.items():
            parts = [f"done {s.done}", f"existing {s.existing}"]
            if s.skipped:
                parts.append(f"skipped {sum(s.skipped.values())} ({_reasons(s.skipped)})")
            if s.failed:
                parts.append(f"FAILED {sum(s.failed.values())} ({_reasons(s.failed)})")
            lines.append(f"  {name:<9} " + ", ".join(parts))
        if self.discovery_errors:
            lines.append(f"  {len(self.discovery_errors)} sources refused:")
            lines.extend(f"    {e.source}: {e.reason}: {e.message}" for e in self.discovery_errors[:20])
        for name, s in self.passes.items():
            if s.notes:
                lines.append(f"  {name:<9} notes: {_reasons(s.notes)}")
        if self.failures:
            lines.append("  failures:")
            lines.extend(f"    {f.image} [{f.pass_name}] {f.reason}: {f.message}" for f in self.failures[:20])
            if self.failed_count > 20:
                lines.append(f"    … {self.failed_count - 20} more in the run record")
        if self.stopped:
            lines.append(f"STOPPED EARLY ({self.stopped}): {self.finished_images} of {self.total_images} images "
                         f"finished, {self.images_left} left; re-run the same command to resume")
        if self.record_error:
            lines.append(f"the run record could not be saved: {self.record_error}")
        return "\n".join(lines)

    def save(self, state_dir: Path) -> Path:
        """Write the run record under <output>/.stratum/runs/ (names sort by start time)."""
        # Several runs can start in one second of one process (Dagster steps): a random tail keeps them apart.
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.started))
        path = Path(state_dir) / "runs" / f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        write_atomic(path, json.dumps(self.to_dict(), indent=1).encode())
        return path


def _reasons(counter: CappedCounter) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counter.most_common())
