"""`stratum status`: artifact counts per type and failures per pass, read from the filesystem only."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from stratum_core.artifacts import ARTIFACTS
from stratum_core.discover import iter_image_dirs
from stratum_core.store import FAILURE_PREFIX, Store


@dataclass
class DatasetStatus:
    total_images: int = 0  # directories with metadata.json
    counts: Counter = field(default_factory=Counter)  # artifact name → images that have it
    failures: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # pass → reasons
    image_dirs: int = 0

    def to_dict(self) -> dict:
        return {"total_images": self.total_images,
                "artifacts": {a.name: self.counts[a.name] for a in ARTIFACTS},
                "failures": {p: dict(c) for p, c in self.failures.items()}}

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
        return "\n".join(lines)


def dataset_status(output_dir: Path) -> DatasetStatus:
    """Walk the output tree once; read only failure records (rare), never artifacts."""
    status = DatasetStatus()
    filenames = {a.filename: a.name for a in ARTIFACTS}
    store = Store(output_dir)
    for image_id, names in iter_image_dirs(Path(output_dir)):
        status.image_dirs += 1
        if "metadata.json" in names:
            status.total_images += 1
        for name in names:
            artifact = filenames.get(name)
            if artifact is not None:
                status.counts[artifact] += 1
            elif name.startswith(FAILURE_PREFIX) and name.endswith(".json"):
                pass_name = name[len(FAILURE_PREFIX):-len(".json")]
                record = store.read_failure(image_id, pass_name) or {}
                status.failures[pass_name][record.get("reason", "unknown")] += 1
    return status


def failure_records(output_dir: Path) -> list[dict]:
    """Every failure record, with its image id (for reports and the Dagster status sensor)."""
    records = []
    for image_id, names in iter_image_dirs(Path(output_dir)):
        for name in sorted(n for n in names if n.startswith(FAILURE_PREFIX)):
            path = Path(output_dir, image_id, name)
            try:
                records.append({"image_id": image_id, **json.loads(path.read_text())})
            except (OSError, ValueError):
                continue
    return records
