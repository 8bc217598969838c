"""Repo layout: range labels, chunk paths (nested and flat), chunk indexes and WebDataset member names.

THE place that maps (layer, range) to a file path and to the index that lists its image ids.

Files in the repo (nested layout, written since 0.x; `<folder>` is a 5-digit number):
  data/<folder>/<first>-<last>.parquet        one row per image (metadata, caption, pose, dinov3 CLS)
  <layer>/<folder>/<first>-<last>.tar         uncompressed WebDataset tar, members `<key>.<artifact>.npy`
  <dir>/<folder>/<first>-<last>.index.json    ONE index per commit batch and folder (version 2):
                                              {"version": 2, "chunks": {"<first>-<last>": entry, ...}}
                                              for every chunk of that folder whose range lies inside it
  manifest.json, README.md, ATTRIBUTION.md (optional)
Flat layout (older repos, still read and extended):
  data/<first>-<last>.parquet, <layer>/<first>-<last>.tar, and beside each one `<first>-<last>.index.json`
  (version 1: the entry itself).

An index entry: {"file", "range", "count", "ids" (true image ids, in member order), and for tars
"artifacts" and "escaped_keys" {key: id} (keys that differ from their id); for parquets "layers", "counts"}.

`first`/`last` are positions of the chunk's first and last image (see publisher: sorted order, or shard
registration order when the dataset has registered shards). Chunks are cut on a per-layer grid of
`images_per_chunk` positions; the grid cell k lies in folder `k // chunks_per_folder`.

WebDataset key escape rule: WebDataset splits a member name at the first dot of its last path
component, so in the LAST component of an image id `%` becomes `%25` and `.` becomes `%2E`
(directory components are left alone: WebDataset keeps dots there). `unescape_key` reverses it
exactly, so the true id of every member is recoverable from its key alone; the index lists it too.
"""

from __future__ import annotations

import bisect
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
_FOLDER = re.compile(r"^\d{5,}$")


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


def chunk_path(layer: str, chunk: ChunkRange, folder: int | None = None) -> str:
    """`data/00012/….parquet` for the data table, `<layer>/00012/….tar` for array layers; flat without `folder`."""
    ext = "parquet" if layer == DATA_DIR else "tar"
    middle = "" if folder is None else f"{folder:05d}/"
    return f"{layer}/{middle}{chunk.label}.{ext}"


def index_path(payload_path: str) -> str:
    """The per-chunk index beside a FLAT chunk (version 1). Nested chunks: see `index_file_for`."""
    return payload_path.rsplit(".", 1)[0] + INDEX_SUFFIX


def batch_index_path(layer: str, folder: str, span: ChunkRange) -> str:
    """A nested folder's index covering `span` (`folder` as in the path, e.g. "00012")."""
    return f"{layer}/{folder}/{span.label}{INDEX_SUFFIX}"


def _split(path: str) -> tuple[str, str | None, str] | None:
    """(layer, folder or None, file name) for `layer/name` and `layer/NNNNN/name`."""
    parts = path.split("/")
    if len(parts) == 2:
        return parts[0], None, parts[1]
    if len(parts) == 3 and _FOLDER.match(parts[1]):
        return parts[0], parts[1], parts[2]
    return None


def parse_chunk_path(path: str) -> tuple[str, ChunkRange] | None:
    """`dinov3/00000-00999.tar` or `dinov3/00000/00000-00999.tar` → ("dinov3", range); None for anything else
    (indexes included)."""
    split = _split(path)
    if split is None:
        return None
    layer, _, name = split
    stem, _, ext = name.rpartition(".")
    expected = "parquet" if layer == DATA_DIR else "tar"
    chunk = parse_range_label(stem) if ext == expected else None
    return (layer, chunk) if chunk else None


def parse_index_path(path: str) -> tuple[str, str | None, ChunkRange] | None:
    """(layer, folder or None for a flat per-chunk index, range) of an index file; None for anything else."""
    split = _split(path)
    if split is None or not split[2].endswith(INDEX_SUFFIX):
        return None
    label = parse_range_label(split[2][:-len(INDEX_SUFFIX)])
    return (split[0], split[1], label) if label else None


def folder_of(path: str) -> str | None:
    """The nested folder of a chunk or index path ("00012"), None for a flat one."""
    split = _split(path)
    return split[1] if split else None


@dataclass(frozen=True)
class ChunkFile:
    """One chunk in a repo: `path` of the payload, and `index` the file listing its ids (None: no index).

    `index` is a flat per-chunk index (version 1: the entry is the whole JSON object) or a nested folder's
    batch index (version 2: the entry is `json["chunks"][range.label]`); `index_entry` reads either."""

    layer: str  # "data" or an array layer
    range: ChunkRange
    path: str
    index: str | None

    @property
    def nested(self) -> bool:
        return folder_of(self.path) is not None


def list_chunks(files: Iterable[str], layer: str | None = None) -> list[ChunkFile]:
    """Every chunk among a repo's file paths (both layouts), sorted by (layer, range); only `layer`'s if given.

    Contract (used by the publisher, reconcile and stratum_core.data.HubStream): `files` is the repo's file
    list (e.g. `HfApi.list_repo_files`). A chunk's ids are in `index_entry(json of .index, chunk)["ids"]`,
    in member / row order; when `.index` is None (hand-deleted index), the parquet's `image_id` column or
    `unescape_key` of each tar member key gives them. Ranges of one layer never overlap.
    """
    files = list(files)
    batch_indexes: dict[tuple[str, str], list[tuple[ChunkRange, str]]] = {}
    flat = set()
    for path in files:
        parsed = parse_index_path(path)
        if parsed is None:
            continue
        if parsed[1] is None:
            flat.add(path)
        else:
            batch_indexes.setdefault((parsed[0], parsed[1]), []).append((parsed[2], path))
    for spans in batch_indexes.values():
        spans.sort()
    chunks = []
    for path in files:
        parsed = parse_chunk_path(path)
        if parsed is None or (layer is not None and parsed[0] != layer):
            continue
        folder = folder_of(path)
        if folder is None:
            index = index_path(path) if index_path(path) in flat else None
        else:
            index = _containing(batch_indexes.get((parsed[0], folder), []), parsed[1])
        chunks.append(ChunkFile(parsed[0], parsed[1], path, index))
    return sorted(chunks, key=lambda c: (c.layer, c.range))


def _containing(spans: list[tuple[ChunkRange, str]], chunk: ChunkRange) -> str | None:
    """The path of the (sorted, non-overlapping) span that contains `chunk`."""
    i = bisect.bisect_right(spans, (ChunkRange(chunk.first, 1 << 62), "")) - 1
    if i >= 0 and spans[i][0].first <= chunk.first and chunk.last <= spans[i][0].last:
        return spans[i][1]
    return None


def index_entry(index: Mapping | None, chunk: ChunkFile | ChunkRange) -> dict | None:
    """The entry of `chunk` in a loaded index file of either version; None when it lists no such chunk."""
    if not isinstance(index, Mapping):
        return None
    label = (chunk.range if isinstance(chunk, ChunkFile) else chunk).label
    if index.get("version", 1) >= 2:
        entry = index.get("chunks", {}).get(label)
        return dict(entry) if isinstance(entry, Mapping) else None
    return dict(index) if index.get("range", label) == label else None


def grid_folder(first: int, images_per_chunk: int, chunks_per_folder: int) -> int:
    """The folder of a chunk starting at position `first`: its grid cell's number // chunks_per_folder."""
    return (first // images_per_chunk) // chunks_per_folder


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


def widen_sorted(cell: ChunkRange, existing: list[ChunkRange]) -> tuple[ChunkRange, list[ChunkRange]]:
    """`widen` over NON-OVERLAPPING ranges sorted by (first, last) (one layer's chunks), found by bisection:
    a republish of 10M images plans tens of thousands of cells against as many chunks."""
    while True:
        # Ranges overlapping the cell start before its end; those that end before its start do not count.
        hi = bisect.bisect_right(existing, ChunkRange(cell.last, 1 << 62))
        lo = hi
        while lo > 0 and existing[lo - 1].last >= cell.first:
            lo -= 1
        covered = [c for c in existing[lo:hi] if c.overlaps(cell)]
        if not covered:
            return cell, []
        grown = ChunkRange(min(cell.first, covered[0].first), max(cell.last, max(c.last for c in covered)))
        if grown == cell:
            return cell, covered
        cell = grown


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
