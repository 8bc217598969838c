"""`stratum status`: artifact counts per type and failures per pass, read from the filesystem only."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from stratum_core.artifacts import ARTIFACTS, BY_NAME
from stratum_core.discover import iter_image_dirs
from stratum_core.errors import StratumError
from stratum_core.provenance import RECORD_NAME, ProvenanceStatus
from stratum_core.store import FAILURE_PREFIX, STATE_DIR, Store


MAX_LISTED = 1000  # failed images listed per pass (--json); the counts are always complete
SHORT_LIST = 10  # a pass with at most this many failures has them all in the text report
EXAMPLES = 3  # failed images shown per pass in the text report when there are more


@dataclass
class DatasetStatus:
    # Every source the dataset knows: image folders with metadata.json or a metadata failure (undecodable),
    # sources of registered shards, and the newest run's sources (an interrupted run's not-yet-seen ones).
    total_images: int = 0
    with_metadata: int = 0
    not_started: int = 0  # known sources with neither metadata.json nor a metadata failure yet
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
        return {"total_images": self.total_images, "not_started": self.not_started,
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
        if self.not_started:
            lines.append(f"Not processed yet: {self.not_started} (registered or in the last run, no metadata.json "
                         "yet; `stratum process` does them)")
        if self.failures:
            lines.append("Failures (from run records; `stratum process` again retries them):")
            for pass_name, reasons in sorted(self.failures.items()):
                count = sum(reasons.values())
                detail = ", ".join(f"{r} {n}" for r, n in reasons.most_common())
                lines.append(f"  {pass_name}: {count} ({detail})")
                shown = self.failed_images[pass_name][:SHORT_LIST if count <= SHORT_LIST else EXAMPLES]
                lines.extend(f"    {i}: {r}: {m}" for i, r, m in shown)
                if count > len(shown):
                    lines.append(f"    … {count - len(shown)} more (all of them: stratum status --json)")
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
    """Walk the output tree once; read only failure records (rare) and shard records, never artifacts."""
    status = DatasetStatus()
    filenames = {a.filename: a.name for a in ARTIFACTS}
    store = Store(output_dir)
    metadata_failure = FAILURE_PREFIX + BY_NAME["metadata"].filename
    seen: list[int] = []  # hashes of the ids with metadata.json or a metadata failure (8 bytes each)
    # The per-image loop runs millions of times: set operations and counts by file name, mapped at the end.
    root, metadata_file, files = str(output_dir), BY_NAME["metadata"].filename, frozenset(filenames)
    quiet = files | {RECORD_NAME}  # names that are never a failure record
    by_names: Counter = Counter()  # the set of file names → image dirs holding exactly those (few distinct sets)
    image_dirs = with_metadata = 0
    for image_id, listed in iter_image_dirs(Path(output_dir)):
        image_dirs += 1
        names = frozenset(listed)
        has_metadata = metadata_file in names
        if has_metadata or metadata_failure in names:  # an undecodable source is a known, failed image
            seen.append(hash(image_id))
        if has_metadata:
            with_metadata += 1
        elif not names.isdisjoint(files):
            status.without_metadata += 1  # counted apart, so no artifact count exceeds the total
            continue
        status.provenance.add(store, image_id, names, f"{root}/{image_id}")  # (ids from the walk are safe)
        by_names[names] += 1
        if not quiet.issuperset(names):
            for name in names - quiet:
                if name.startswith(FAILURE_PREFIX) and name.endswith(".json"):
                    pass_name = name[len(FAILURE_PREFIX):-len(".json")]
                    status.add_failure(image_id, pass_name, store.read_failure(image_id, pass_name) or {})
    status.image_dirs, status.with_metadata = image_dirs, with_metadata
    for names, n in by_names.items():
        for filename in names & files:
            status.counts[filenames[filename]] += n
    status.refused_in, record = newest_run_record(store.state_dir / "runs")
    status.refused_sources = list(record.get("discovery_errors") or [])[:MAX_LISTED]
    status.notes = run_notes(record)
    known = _union_size(seen, _registered_ids(Path(output_dir)))
    status.total_images = max(known, _int(record.get("total_images")))
    status.not_started = status.total_images - len(seen)
    return status


def _registered_ids(output_dir: Path) -> list[int]:
    """Hashes of every registered shard's image ids (the shard records are the dataset's source list)."""
    from stratum_core.shards import load_shard, shard_keys

    ids: list[int] = []
    for key in shard_keys(output_dir):
        try:
            ids.extend(hash(i) for i in load_shard(output_dir, key).image_ids)
        except (OSError, ValueError, KeyError, StratumError):
            continue  # a damaged record: status still reports the rest
    return ids


def _union_size(a: list[int], b: list[int]) -> int:
    import numpy as np

    if not b:
        return len(a)
    return len(np.union1d(np.asarray(a, np.int64), np.asarray(b, np.int64)))


def run_notes(record: dict) -> dict[str, dict[str, int]]:
    """Per-pass notes (truncated captions, ...) of a run record; {} when it has none."""
    passes = record.get("passes")
    if not isinstance(passes, dict):
        return {}
    return {p: dict(stats["notes"]) for p, stats in passes.items()
            if isinstance(stats, dict) and isinstance(stats.get("notes"), dict) and stats["notes"]}


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def newest_run_record(runs_dir: Path) -> tuple[str, dict]:
    """(name, content) of the newest readable run record, ("", {}) if none; run records sort by start time."""
    try:
        names = sorted((n for n in os.listdir(runs_dir) if n.endswith(".json")), reverse=True)
    except OSError:
        return "", {}
    for name in names:
        try:
            record = json.loads((runs_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a damaged record: fall back to the one before it
        if isinstance(record, dict):
            return name, record
    return "", {}


def require_dataset(path: Path) -> None:
    """A clear error, before any report, for a folder that is not a stratum dataset (e.g. the input)."""
    from stratum_core.discover import IMAGE_EXTENSIONS

    if not path.is_dir():
        raise StratumError(f"no dataset at {path}")
    if (path / STATE_DIR).is_dir() or next(iter_image_dirs(path), None) is not None:
        return
    with os.scandir(path) as entries:
        images = sum(1 for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
    hint = f"it holds {images} source images; " if images else ""
    raise StratumError(f"{path} is not a stratum dataset (no .stratum folder, no image folders): {hint}"
                       "give the --output folder of `stratum process`")
