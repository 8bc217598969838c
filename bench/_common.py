"""What every bench shares: its scratch workspace, the `--repeat` rounds (min and median) and the table printer.

A bench is a script run as `python bench/<name>.py`: Python puts bench/ first on sys.path, so
`from _common import ...` finds this file, and stratum_core / stratum_testing come from the installed
package (or from `PYTHONPATH=.` on a bare GPU host). Standard library only: bench/gpu.py imports it on a
host without dagster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np


# ---------------------------------------------------------------------- workspace
@contextmanager
def workspace(name: str, keep: Path | None = None, parent: Path | None = None) -> Iterator[Path]:
    """The bench's scratch folder: `keep` (created if missing, left in place) or a fresh temporary
    `stratum-bench-<name>-*` folder (under `parent` if given), removed at the end, also after an error."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    folder = Path(tempfile.mkdtemp(prefix=f"stratum-bench-{name}-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def dagster_home() -> Iterator[Path]:
    """A fresh Dagster instance folder (default sqlite storage, telemetry off) as DAGSTER_HOME for the block.

    Fresh on every run, even in a kept workspace, so no run sees another's partitions or event log; the
    previous DAGSTER_HOME comes back and the folder is removed afterwards.
    """
    home = Path(tempfile.mkdtemp(prefix="stratum-bench-dagster-home-"))
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    before = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        yield home
    finally:
        if before is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = before
        shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------------- repeats
def add_repeat(parser: argparse.ArgumentParser, default: int) -> None:
    """The one `--repeat N` flag of every bench."""
    parser.add_argument("--repeat", type=_positive, default=default,
                        help=f"timed rounds, the sides interleaved; min and median are reported (default {default})")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


@dataclass
class Samples:
    """One figure's values over the rounds of a run: seconds (best = min) or a rate (best = max)."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> float:
        self.values.append(value)
        return value

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def seconds(self, digits: int = 2) -> str:
        """'1.23 s (median 1.30)'; just '1.23 s' for one round."""
        if len(self.values) == 1:
            return f"{self.min:.{digits}f} s"
        return f"{self.min:.{digits}f} s (median {self.median:.{digits}f})"


def rounds(sides: dict[str, Callable[[int], float]], repeat: int) -> dict[str, Samples]:
    """Each side's seconds over `repeat` rounds, the sides interleaved within a round, so a busy moment on a
    shared machine hits all of them alike; each side gets the round number (for a fresh output folder)."""
    samples = {name: Samples() for name in sides}
    for r in range(repeat):
        for name, side in sides.items():
            samples[name].add(side(r))
    return samples


# ---------------------------------------------------------------------- tables
def table(headers: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = False) -> str:
    """Rows under `headers`: aligned plain-text columns (numbers right-aligned, text and the first column
    left-aligned), or a markdown table. Floats print with two decimals; format a cell yourself for anything else."""
    cells = [[_cell(v) for v in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    left = [i == 0 or any(not _numeric(row[i]) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if lft else v.rjust(w) for v, w, lft in zip(values, widths, left))

    return "\n".join(line(row).rstrip() for row in [list(headers), *cells])


def _numeric(value: object) -> bool:
    """A number, or a figure already formatted as one ('+1.5', '2.10x', '40%'): right-aligned."""
    if isinstance(value, (int, float)):
        return True
    try:
        float(str(value).strip().lstrip("+").rstrip("x%"))
        return True
    except ValueError:
        return False


def _cell(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------- inputs
# Words of the generated 60-120-word captions (bench/dinov3_t5.py, bench/gpu.py).
CAPTION_WORDS = ("a man woman standing sitting wearing dark light jacket shirt left right hand arm raised "
                 "background wall window soft shadow from above camera angle frame centred cropped knee "
                 "blue red white grey trousers barefoot hair short long face turned towards").split()


def make_photos(folder: Path, n: int, sizes: Sequence[tuple[int, int]]) -> None:
    """`n` photo-like images at `sizes` (width, height) in turn: a smooth colour field plus mild noise, in four
    subfolders, 70% JPEG and 30% PNG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    noise = rng.normal(0, 6, (512, 512, 3)).astype(np.int16)  # tiled: cheap to make, still not flat
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        # A small smooth field upscaled (fast), plus the tiled noise.
        small = rng.integers(30, 225, (6, 8, 3), dtype=np.uint8)
        field_ = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        tiled = np.tile(noise, (h // 512 + 1, w // 512 + 1, 1))[:h, :w]
        img = Image.fromarray((field_ + tiled).clip(0, 255).astype(np.uint8))
        sub = folder / f"set{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        if i % 10 < 7:
            img.save(sub / f"{i:04d}.jpg", quality=90)
        else:
            img.save(sub / f"{i:04d}.png", compress_level=3)
