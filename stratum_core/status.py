"""`stratum status`: artifact counts per type and failures per pass, read from the filesystem only."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from stratum_core.artifacts import ARTIFACTS
from stratum_core.discover import iter_image_dirs
from stratum_core.provenance import ProvenanceStatus
from stratum_core.store import FAILURE_PREFIX, Store


MAX_LISTED = 1000  # failed images listed per pass (--json); the counts are always complete
EXAMPLES = 3  # failed images shown per pass in the text report


@dataclass
class DatasetStatus:
    total_images: int = 0  # directories with metadata.json
    counts: Counter = field(default_factory=Counter)  # artifact name → images that have it
    failures: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # pass → reasons
    # pass → (image id, reason, message) of failed images, at most MAX_LISTED per pass
    failed_images: dict[str, list[tuple[str, str, str]]] = field(default_factory=lambda: defaultdict(list))
    image_dirs: int = 0
    without_metadata: int = 0  # folders holding artifacts but no metadata.json (the next process rebuilds it)
    # Sources the latest run refused (collisions, outside the input, bad list lines): they have no
    # image directory, so only the run record knows them.
    refused_sources: list[dict] = field(default_factory=list)
    refused_in: str = ""  # the run record they come from
    # Counted successes of the latest run per pass (e.g. caption: {"truncated": 3}), from its record.
    notes: dict[str, dict[str, int]] = field(default_factory=dict)
    provenance: ProvenanceStatus = field(default_factory=ProvenanceStatus)  # stale / unknown per pass

    def add_failure(self, image_id: str, pass_name: str, record: dict) -> None:
        reason = record.get("reason", "unknown")
        self.failures[pass_name][reason] += 1
        if len(self.failed_images[pass_name]) < MAX_LISTED:
            self.failed_images[pass_name].append((image_id, reason, record.get("message", "")))

    def to_dict(self) -> dict:
        return {"total_images": self.total_images,
                "artifacts": {a.name: self.counts[a.name] for a in ARTIFACTS},
                "failures": {p: dict(c) for p, c in self.failures.items()},
                "failed_images": {p: [{"image_id": i, "reason": r, "message": m} for i, r, m in listed]
                                  for p, listed in self.failed_images.items()},
                "without_metadata": self.without_metadata,
                "refused_sources": self.refused_sources, "refused_in": self.refused_in, "notes": self.notes,
                "provenance": self.provenance.to_dict()}

    def format(self) -> str:
        total = self.total_images
        lines = [f"Total images: {total}"]
        for a in ARTIFACTS:
            n = self.counts[a.name]
            pct = 100.0 * n / total if total else 0.0
            lines.append(f"{a.name}: {n} / {total} ({pct:.1f}%)")
        if self.failures:
            lines.append("Failures (from run records; `stratum process` again retries them):")
            for pass_name, reasons in sorted(self.failures.items()):
                detail = ", ".join(f"{r} {n}" for r, n in reasons.most_common())
                lines.append(f"  {pass_name}: {sum(reasons.values())} ({detail})")
                lines.extend(f"    {i}: {r}: {m}" for i, r, m in self.failed_images[pass_name][:EXAMPLES])
                if sum(reasons.values()) > EXAMPLES:
                    lines.append("    … (all of them: stratum status --json)")
        if self.without_metadata:
            lines.append(f"Folders with artifacts but no metadata.json: {self.without_metadata} "
                         "(not counted above; `stratum process` rebuilds it)")
        for pass_name, notes in self.notes.items():
            lines.append(f"Last run's {pass_name} notes: " + ", ".join(f"{k} {n}" for k, n in notes.items()))
        if self.refused_sources:
            lines.append(f"Sources refused by the last run ({self.refused_in}): {len(self.refused_sources)}")
            lines.extend(f"  {e.get('source')}: {e.get('reason')}: {e.get('message')}"
                         for e in self.refused_sources[:EXAMPLES])
            if len(self.refused_sources) > EXAMPLES:
                lines.append("  … (all of them: stratum status --json)")
        lines.extend(self.provenance.format_lines())
        return "\n".join(lines)


def dataset_status(output_dir: Path) -> DatasetStatus:
    """Walk the output tree once; read only failure records (rare), never artifacts."""
    status = DatasetStatus()
    filenames = {a.filename: a.name for a in ARTIFACTS}
    store = Store(output_dir)
    for image_id, names in iter_image_dirs(Path(output_dir)):
        status.image_dirs += 1
        has_metadata = "metadata.json" in names
        if has_metadata:
            status.total_images += 1
        elif not names.isdisjoint(filenames):
            status.without_metadata += 1  # counted apart, so no artifact count exceeds the total
            continue
        status.provenance.add(store, image_id, names)
        for name in names:
            artifact = filenames.get(name)
            if artifact is not None:
                status.counts[artifact] += 1
            elif name.startswith(FAILURE_PREFIX) and name.endswith(".json"):
                pass_name = name[len(FAILURE_PREFIX):-len(".json")]
                status.add_failure(image_id, pass_name, store.read_failure(image_id, pass_name) or {})
    status.refused_in, status.refused_sources = last_refused_sources(store.state_dir / "runs")
    status.notes = last_run_notes(store.state_dir / "runs", status.refused_in)
    return status


def last_run_notes(runs_dir: Path, name: str) -> dict[str, dict[str, int]]:
    """Per-pass notes (truncated captions, ...) of run record `name`; {} when it has none."""
    if not name:
        return {}
    try:
        passes = json.loads((runs_dir / name).read_text(encoding="utf-8")).get("passes") or {}
        return {p: dict(stats["notes"]) for p, stats in passes.items() if isinstance(stats, dict) and stats.get("notes")}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def last_refused_sources(runs_dir: Path) -> tuple[str, list[dict]]:
    """(record name, refused sources) of the newest readable run record; run records sort by start time."""
    try:
        names = sorted((n for n in os.listdir(runs_dir) if n.endswith(".json")), reverse=True)
    except OSError:
        return "", []
    for name in names:
        try:
            record = json.loads((runs_dir / name).read_text(encoding="utf-8"))
            return name, list(record.get("discovery_errors") or [])[:MAX_LISTED]
        except (OSError, ValueError, AttributeError):
            continue  # a damaged record: fall back to the one before it
    return "", []


