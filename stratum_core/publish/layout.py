"""Repo layout: range labels, chunk planning, WebDataset member names and the per-chunk index.

Files in the repo:
  data/<first>-<last>.parquet         one row per image (metadata, caption, pose, dinov3 CLS)
  data/<first>-<last>.index.json      ids and per-layer counts of that chunk
  <layer>/<first>-<last>.tar          uncompressed WebDataset tar, members `<key>.<artifact>.npy`
  <layer>/<first>-<last>.index.json   ids, keys and count of that tar
  manifest.json, README.md, ATTRIBUTION.md (optional)

`first`/`last` are positions of the chunk's first and last image in the dataset's sorted order.

WebDataset key escape rule: WebDataset splits a member name at the first dot of its last path
component, so in the LAST component of an image id `%` becomes `%25` and `.` becomes `%2E`
(directory components are left alone: WebDataset keeps dots there). `unescape_key` reverses it
exactly; the chunk's index also lists the true id of every key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from stratum_core.artifacts import Artifact, artifacts_of

DATA_DIR = "data"
MANIFEST_PATH = "manifest.json"
CARD_PATH = "README.md"
ATTRIBUTION_PATH = "ATTRIBUTION.md"
INDEX_SUFFIX = ".index.json"
PARQUET_LAYERS = ("caption", "pose", "dinov3")  # layers that also have a parquet column
TEXT_LAYERS = ("caption",)  # layers that live only in the parquet (no tar)

_LABEL = re.compile(r"^(\d{5,})-(\d{5,})$")


@dataclass(frozen=True, order=True)
class ChunkRange:
    """Inclusive positions [first, last] in the dataset's sorted order."""

    first: int
    last: int

    @property
    def label(self) -> str:
        return range_label(self.first, self.last)

    def overlaps(self, other: "ChunkRange") -> bool:
        return self.first <= other.last and other.first <= self.last

    def __len__(self) -> int:
        return self.last - self.first + 1


def range_label(first: int, last: int) -> str:
    return f"{first:05d}-{last:05d}"


def parse_range_label(label: str) -> ChunkRange | None:
    match = _LABEL.match(label)
    if not match:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    return ChunkRange(first, last) if first <= last else None


def chunk_path(layer: str, chunk: ChunkRange) -> str:
    """`data/00000-00999.parquet` for the data table, `<layer>/00000-00999.tar` for array layers."""
    ext = "parquet" if layer == DATA_DIR else "tar"
    return f"{layer}/{chunk.label}.{ext}"


def index_path(payload_path: str) -> str:
    return payload_path.rsplit(".", 1)[0] + INDEX_SUFFIX


def manifest_chunks(manifest: Mapping, layer: str) -> list[tuple[ChunkRange, str]]:
    """(range, path in the repo) of each chunk file `manifest` lists for `layer`, in position order.

    `layer` "data" is the parquet table; a text layer (caption) lives in it. Readers (stratum_core.data)
    find chunk files only through this and `index_path`, never by a path pattern of their own.
    """
    entry = manifest.get(DATA_DIR, {}) if layer == DATA_DIR else manifest.get("layers", {}).get(layer, {})
    folder = DATA_DIR if layer == DATA_DIR or layer in TEXT_LAYERS else layer
    ranges = sorted(r for r in map(parse_range_label, entry.get("chunks", {})) if r is not None)
    return [(r, chunk_path(folder, r)) for r in ranges]


def parse_chunk_path(path: str) -> tuple[str, ChunkRange] | None:
    """`dinov3/00000-00999.tar` → ("dinov3", range); None for anything else (indexes included)."""
    folder, _, name = path.rpartition("/")
    if not folder or "/" in folder:
        return None
    stem, _, ext = name.rpartition(".")
    expected = "parquet" if folder == DATA_DIR else "tar"
    chunk = parse_range_label(stem) if ext == expected else None
    return (folder, chunk) if chunk else None


def escape_key(image_id: str) -> str:
    """The WebDataset key of an image id (see the module docstring for the rule)."""
    head, sep, last = image_id.rpartition("/")
    return head + sep + last.replace("%", "%25").replace(".", "%2E")


def unescape_key(key: str) -> str:
    head, sep, last = key.rpartition("/")
    return head + sep + last.replace("%2E", ".").replace("%25", "%")


def member_name(image_id: str, artifact: Artifact) -> str:
    return f"{escape_key(image_id)}.{artifact.name}.npy"


def parse_member_name(name: str) -> tuple[str, str] | None:
    """`a/v1%2E2.dinov3_cls.npy` → ("a/v1%2E2", "dinov3_cls"): (key, artifact name), the inverse of
    `member_name`; None for a name that is not `<key>.<artifact>.npy`."""
    head, sep, last = name.rpartition("/")
    stem, dot, rest = last.partition(".")
    if not dot or not rest.endswith(".npy") or len(rest) == len(".npy"):
        return None
    return head + sep + stem, rest[:-len(".npy")]


def tar_artifacts(layer: str) -> tuple[Artifact, ...]:
    return tuple(a for a in artifacts_of(layer) if a.kind == "npy")


def grid_cells(selection: range, size: int) -> Iterable[ChunkRange]:
    """The selection cut at multiples of `size` (absolute positions), so chunks line up across runs."""
    start = selection.start
    while start < selection.stop:
        end = min((start // size + 1) * size, selection.stop)
        yield ChunkRange(start, end - 1)
        start = end


def widen(cell: ChunkRange, existing: Iterable[ChunkRange]) -> tuple[ChunkRange, list[ChunkRange]]:
    """Grow `cell` to cover every existing chunk it overlaps (transitively), so chunks never overlap."""
    existing = sorted(existing)
    covered: list[ChunkRange] = []
    changed = True
    while changed:
        changed = False
        for chunk in existing:
            if chunk not in covered and chunk.overlaps(cell):
                covered.append(chunk)
                cell = ChunkRange(min(cell.first, chunk.first), max(cell.last, chunk.last))
                changed = True
    return cell, sorted(covered)


def split_by_size(positions: list[int], sizes: list[int], max_bytes: int) -> list[list[int]]:
    """Consecutive groups whose total size stays under `max_bytes` (a group holds at least one image)."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for position, size in zip(positions, sizes):
        if current and total + size > max_bytes:
            groups.append(current)
            current, total = [], 0
        current.append(position)
        total += size
    if current:
        groups.append(current)
    return groups
