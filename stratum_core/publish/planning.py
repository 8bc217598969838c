"""Plan a publish from positions and sizes only: per-layer chunk grids, nested folders, commit batches, and
the repo it leads to (files, folders, largest folder, bytes, commits) checked against the Hub's limits.

The publisher packs exactly the chunks planned here; `stratum publish --plan` prints the summary without
uploading or reading array data (sizes come from `stat`), and the 10M-image test feeds simulated sizes.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

from stratum_core.errors import ConfigError
from stratum_core.publish.config import PublishConfig
from stratum_core.publish.layout import (CARD_PATH, DATA_DIR, MANIFEST_PATH, TEXT_LAYERS, ChunkFile, ChunkRange,
                                         batch_index_path, chunk_path, grid_cells, grid_folder, list_chunks,
                                         parse_index_path, widen, widen_sorted)

MB = 1024 * 1024
MAX_IMAGES_PER_TAR = 1_000_000  # tiny layers (pose: 800 B an image) would otherwise make one tar of millions
GROW_FACTOR = 4  # a tail chunk is rewritten with the new images while at most this many times their bytes
TAR_END = 2 * 512 + 20 * 512  # end-of-archive blocks plus at most one record of padding

# bytes(layer, start, stop) → int64 array of the bytes each position adds to that layer's chunk (0: lacks it)
SizeFn = Callable[[str, int, int], np.ndarray]


@dataclass(frozen=True)
class LayerChunking:
    """A layer's grid: `images_per_chunk` positions per cell, `chunks_per_folder` cells per nested folder.
    Recorded in the manifest so every later run cuts the same grid."""

    images_per_chunk: int
    chunks_per_folder: int

    def to_json(self) -> dict:
        return {"images_per_chunk": self.images_per_chunk, "chunks_per_folder": self.chunks_per_folder}


@dataclass(frozen=True)
class PlannedChunk:
    layer: str
    chunk: ChunkRange
    path: str
    count: int  # images in the chunk
    nbytes: int  # planned file size
    positions: np.ndarray | None = None  # positions of the images in it when not all of the range


@dataclass
class LayoutPlan:
    """The chunks to (re)pack, in commit order, and the repo they lead to."""

    chunks: list[PlannedChunk]
    chunking: dict[str, LayerChunking]
    files: int = 0  # files in the repo after the publish
    folders: int = 0
    largest_folder: tuple[str, int] = ("", 0)  # (path, entries)
    bytes: int = 0  # bytes of the chunks to upload
    commits: int = 0
    hours: float = 0.0  # at the configured commits per hour
    problems: list[str] = field(default_factory=list)  # Hub limits the plan would break
    # layer → what produced its selected images (`provenance.layer_provenance`, variants kept); set by
    # `publisher.plan`, empty when planning from sizes alone
    provenance: dict[str, dict] = field(default_factory=dict)
    allow_mixed_revisions: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def refused_layers(self) -> list[str]:
        """Layers `publish` would refuse: their images come from several model revisions (see `variants`)."""
        if self.allow_mixed_revisions:
            return []
        return [layer for layer, info in self.provenance.items() if "variants" in info]

    @property
    def publishable(self) -> bool:
        """`publish` with the same options would go ahead: within the Hub's limits, no refused layer."""
        return self.ok and not self.refused_layers

    def summary(self) -> str:
        folder, entries = self.largest_folder
        lines = [f"chunks to pack: {len(self.chunks)}, {self.bytes / 1e9:.1f} GB",
                 f"repo after publish: {self.files} files in {self.folders} folders, largest folder "
                 f"{folder or '/'} with {entries} entries",
                 f"commits: {self.commits} (at most {self.hours:.1f} h at the configured pace)"]
        lines += [f"  {layer}: {c.images_per_chunk} images per chunk, {c.chunks_per_folder} chunks per folder"
                  for layer, c in self.chunking.items()]
        lines += [f"LIMIT: {p}" for p in self.problems] or ["within the Hub's limits"]
        lines += self._provenance_lines()
        return "\n".join(lines)

    def _provenance_lines(self) -> list[str]:
        if not self.provenance:
            return []
        lines = ["provenance (what produced each layer):"]
        for layer, info in self.provenance.items():
            unknown = f"{info['unknown']} of unknown provenance" if info.get("unknown") else ""
            if not info.get("images"):
                lines.append(f"  {layer}: unknown provenance ({info.get('unknown', 0)} images without a record)")
                continue
            variants = info.get("variants", [info])
            produced = "; ".join(f"{v['images']} by {produced_by(v)}" for v in variants)
            label = f"{len(variants)} model revisions: " if len(variants) > 1 else ""
            lines.append(f"  {layer}: {label}{produced}" + (f"; {unknown}" if unknown else ""))
            if len(variants) > 1:
                lines.append(f"  REFUSED: {layer} mixes model revisions; `--allow-mixed-revisions` would publish it"
                             if layer in self.refused_layers else
                             f"  {layer}: mixed revisions allowed (--allow-mixed-revisions): the manifest and card "
                             "list the mix")
        return lines

    def to_dict(self) -> dict:
        return {"chunks": len(self.chunks), "bytes": self.bytes, "files": self.files, "folders": self.folders,
                "largest_folder": list(self.largest_folder), "commits": self.commits, "hours": self.hours,
                "chunking": {k: v.to_json() for k, v in self.chunking.items()}, "problems": self.problems,
                "provenance": self.provenance, "refused_layers": self.refused_layers,
                "allow_mixed_revisions": self.allow_mixed_revisions}


def produced_by(variant: Mapping) -> str:
    """`model weights vN precision` of one (model, weights, pass version, precision), leaving out what is unset."""
    version = variant.get("version")
    parts = [variant.get("model"), variant.get("weights"), f"v{version}" if version is not None else None,
             variant.get("precision")]
    return " ".join(str(p) for p in parts if p) or "-"


def nice_floor(n: float) -> int:
    """`n` rounded down to two significant digits (487 → 480), at least 1."""
    if n < 100:
        return max(1, int(n))
    scale = 10 ** (int(math.log10(n)) - 1)
    return int(n // scale) * scale


def choose_chunking(layer: str, config: PublishConfig, recorded: Mapping | None, mean_bytes: float) -> LayerChunking:
    """An explicit option, else the grid the manifest recorded, else one sized for `config.target_tar_mb`."""
    per_folder = max(1, config.folder_limit // 2)  # at most one index file per chunk besides it
    if layer == DATA_DIR:
        return LayerChunking(config.rows_per_parquet, int((recorded or {}).get("chunks_per_folder", per_folder)))
    if config.images_per_tar:
        return LayerChunking(config.images_per_tar, int((recorded or {}).get("chunks_per_folder", per_folder)))
    if recorded:
        return LayerChunking(int(recorded["images_per_chunk"]), int(recorded["chunks_per_folder"]))
    target = min(config.target_tar_mb, config.max_tar_mb) * MB
    return LayerChunking(min(MAX_IMAGES_PER_TAR, nice_floor(target / max(mean_bytes, 1.0))), per_folder)


def layer_cells(selection: range, total: int, grid: int, existing: list[ChunkRange],
                grow: Callable[[ChunkRange, ChunkRange], bool] = lambda tail, cell: True) -> list[ChunkRange]:
    """Grid cells of the selection, widened over every chunk they overlap. A cell that starts after chunks
    already in its grid cell grows over the last of them (the tail) when `grow(tail, cell)`: the partial
    last chunk of a growing dataset grows into its full cell, as long as rewriting it stays cheap next to
    what the publish adds (see `plan_layout`)."""
    existing = sorted(existing)
    by_cell: dict[int, list[ChunkRange]] = {}
    for chunk in existing:
        if chunk.first // grid == chunk.last // grid:
            by_cell.setdefault(chunk.first // grid, []).append(chunk)
    cells: list[ChunkRange] = []
    for cell in grid_cells(selection, grid):
        before = [c for c in by_cell.get(cell.first // grid, []) if c.last < cell.first]
        if before and before[-1].last == cell.first - 1 and grow(before[-1], cell):
            cell = ChunkRange(before[-1].first, cell.last)
        cell, _ = widen_sorted(cell, existing)
        while cells and cells[-1].overlaps(cell):  # cells come in order: only the last ones can overlap
            previous = cells.pop()
            cell = ChunkRange(min(previous.first, cell.first), max(previous.last, cell.last))
        if cell.last >= total:
            raise ConfigError(f"the repo has chunks up to position {cell.last}, but the dataset has only "
                              f"{total} images; publish from the full dataset")
        cells.append(cell)
    return cells


def split_cell(cell: ChunkRange, sizes: np.ndarray, max_bytes: int) -> list[tuple[ChunkRange, np.ndarray]]:
    """The cell as one chunk, or consecutive parts under `max_bytes` each; with the positions of the images
    that have the layer. `sizes[i]` belongs to position cell.first + i."""
    present = np.flatnonzero(sizes) + cell.first
    if present.size == 0:
        return []
    if int(sizes.sum()) + TAR_END <= max_bytes:
        return [(cell, present)]
    groups: list[list[int]] = []
    total = 0
    for position in present.tolist():
        size = int(sizes[position - cell.first])
        if groups and total + size > max_bytes - TAR_END:
            groups.append([])
            total = 0
        if not groups:
            groups.append([])
        groups[-1].append(position)
        total += size
    parts = []
    for i, group in enumerate(groups):
        first = cell.first if i == 0 else group[0]
        last = cell.last if i == len(groups) - 1 else groups[i + 1][0] - 1
        parts.append((ChunkRange(first, last), np.asarray(group)))
    return parts


def plan_layout(selection: range, total: int, layers: Iterable[str], sizes: SizeFn, config: PublishConfig,
                repo_files: Iterable[str] | Mapping[str, object] = (), manifest: Mapping | None = None) -> LayoutPlan:
    """Plan the data table plus one tar series per array layer of `layers` for `selection` of `total` positions.

    `repo_files`/`manifest`: the repo as it is (existing chunks keep their paths and widen the new cells);
    a mapping path → file with a `.size` also bounds regrowth: the tail chunk of a grid cell is rewritten
    to take the new images only while it is at most GROW_FACTOR times what they add (publishing 1,000 images
    at a time must not rewrite a 1.9 GB pose tar each time; the tail then stays and a new chunk follows it).
    Chunks come data first, then layer by layer, in position order: a commit batch then touches one or two
    folders, so it adds one or two index files.
    """
    repo_sizes = {p: int(f.size) for p, f in repo_files.items() if hasattr(f, "size")} \
        if isinstance(repo_files, Mapping) else {}
    repo_files = list(repo_files)
    existing = list_chunks(repo_files)
    recorded = (manifest or {}).get("chunking", {})
    order = [DATA_DIR] + [layer for layer in layers if layer not in TEXT_LAYERS and layer != DATA_DIR]
    chunks: list[PlannedChunk] = []
    chunking: dict[str, LayerChunking] = {}
    for layer in order:
        mine = [c for c in existing if c.layer == layer]
        sel_sizes = np.asarray(sizes(layer, selection.start, selection.stop), dtype=np.int64)
        present = sel_sizes[sel_sizes > 0]
        grid = choose_chunking(layer, config, recorded.get(layer), float(present.mean()) if present.size else 1.0)
        known = {c.range: repo_sizes[c.path] for c in mine if c.path in repo_sizes}

        def grow(tail: ChunkRange, cell: ChunkRange) -> bool:
            adds = int(sel_sizes[cell.first - selection.start:cell.last + 1 - selection.start].sum())
            return tail not in known or known[tail] <= GROW_FACTOR * adds

        cells = layer_cells(selection, total, grid.images_per_chunk, [c.range for c in mine], grow)
        if not cells:
            continue
        lo, hi = cells[0].first, cells[-1].last + 1
        span = sel_sizes if (lo, hi) == (selection.start, selection.stop) else \
            np.asarray(sizes(layer, lo, hi), dtype=np.int64)
        planned = _layer_chunks(layer, cells, span, lo, grid, mine, config)
        if planned or layer in recorded:  # a grid sized without a single image of the layer is not kept
            chunking[layer] = grid
        chunks += planned
    plan = LayoutPlan(chunks, chunking)
    _summarise(plan, repo_files, existing, manifest, config)
    return plan


def _layer_chunks(layer: str, cells: list[ChunkRange], span: np.ndarray, lo: int, grid: LayerChunking,
                  existing: list[ChunkFile], config: PublishConfig) -> list[PlannedChunk]:
    by_range = {c.range: c.path for c in existing}
    max_bytes = int(config.max_tar_mb * MB) if layer != DATA_DIR else 1 << 62
    planned = []
    for cell in cells:
        sizes = span[cell.first - lo:cell.last + 1 - lo]
        for part, positions in split_cell(cell, sizes, max_bytes):
            folder = grid_folder(part.first, grid.images_per_chunk, grid.chunks_per_folder)
            path = by_range.get(part) or chunk_path(layer, part, folder)  # an existing chunk keeps its path
            nbytes = int(span[positions - lo].sum()) + (TAR_END if layer != DATA_DIR else 0)
            whole = positions.size == len(part)
            planned.append(PlannedChunk(layer, part, path, int(positions.size), nbytes,
                                        None if whole else positions))
    return planned


def batches(chunks: list, per_commit: int) -> list[list]:
    return [chunks[i:i + per_commit] for i in range(0, len(chunks), per_commit)]


def merged_index_path(layer: str, folder: str, new: list[ChunkRange], existing: dict[str, ChunkRange],
                      absorbable: Callable[[str], bool] = lambda path: False) -> tuple[str, list[str]]:
    """The batch index for the `new` chunk ranges of one folder, widened over the folder's index files whose
    spans it overlaps, and over the nearest one before it when `absorbable(path)` (it lists fewer chunks than
    a commit carries: small appends would otherwise add an index file each). `existing`: path → span.
    Returns (its path, the index files it replaces)."""
    span = ChunkRange(min(r.first for r in new), max(r.last for r in new))
    span, covered = widen(span, existing.values())
    before = [(r, p) for p, r in existing.items() if r.last < span.first]
    if before:
        nearest, path = max(before)
        if absorbable(path):
            span, covered = widen(ChunkRange(nearest.first, span.last), existing.values())
    path = batch_index_path(layer, folder, span)
    return path, sorted(p for p, r in existing.items() if r in covered and p != path)


def _summarise(plan: LayoutPlan, repo_files: list[str], existing: list[ChunkFile], manifest: Mapping | None,
               config: PublishConfig) -> None:
    """Files, folders and commits of the repo after the planned publish (chunks already present with the same
    range and count are not counted as uploads: publish finds them unchanged by content hash)."""
    counts = _manifest_counts(manifest)
    new_paths = {c.path for c in plan.chunks}
    files = set(repo_files)
    planned: dict[str, list[ChunkRange]] = {}
    for c in plan.chunks:
        planned.setdefault(c.layer, []).append(c.chunk)
    for chunk in existing:  # chunks the new ones overlap but do not replace go, with their flat indexes
        if chunk.path not in new_paths and widen_sorted(chunk.range, planned.get(chunk.layer, []))[1]:
            files.discard(chunk.path)
            if chunk.index and not chunk.nested:
                files.discard(chunk.index)
    todo = [c for c in plan.chunks if not (c.path in files and counts.get(c.path) == c.count)]
    files |= new_paths
    plan.bytes = sum(c.nbytes for c in todo)
    indexes: dict[tuple[str, str], dict[str, ChunkRange]] = {}
    for path in files:
        parsed = parse_index_path(path)
        if parsed and parsed[1] is not None:
            indexes.setdefault((parsed[0], parsed[1]), {})[path] = parsed[2]
    listed: dict[str, int] = {}  # chunks listed by the index files this plan writes (the repo's: unknown)
    for batch in batches(todo, config.chunks_per_commit):
        by_folder: dict[tuple[str, str], list[ChunkRange]] = {}
        for c in batch:
            folder = c.path.split("/")[1] if c.path.count("/") == 2 else None
            if folder is not None:
                by_folder.setdefault((c.layer, folder), []).append(c.chunk)
        for (layer, folder), ranges in by_folder.items():
            current = indexes.setdefault((layer, folder), {})
            path, replaced = merged_index_path(layer, folder, ranges, current,
                                               lambda p: listed.get(p, config.chunks_per_commit) <
                                               config.chunks_per_commit)
            listed[path] = len(ranges) + sum(listed.get(p, 0) for p in replaced)
            for p in replaced:
                current.pop(p)
                files.discard(p)
            current[path] = parse_index_path(path)[2]
            files.add(path)
    files |= {MANIFEST_PATH, CARD_PATH, ".gitattributes"}
    plan.commits = math.ceil(len(todo) / config.chunks_per_commit)
    plan.hours = plan.commits / config.commits_per_hour
    entries = _folder_entries(files)
    plan.files, plan.folders = len(files), len(entries)
    plan.largest_folder = max(entries.items(), key=lambda kv: (kv[1], kv[0])) if entries else ("", 0)
    for folder, n in entries.items():
        if n > config.folder_limit:
            plan.problems.append(f"{folder or '/'} would hold {n} entries (limit {config.folder_limit})")
    if plan.files > config.file_limit:
        plan.problems.append(f"the repo would hold {plan.files} files (limit {config.file_limit})")


def _folder_entries(files: Iterable[str]) -> dict[str, int]:
    """Entries (files and subfolders) directly in each folder of the repo; "" is the root."""
    children: dict[str, set[str]] = {}
    for path in files:
        parts = path.split("/")
        for depth in range(len(parts)):
            children.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    return dict(Counter({folder: len(names) for folder, names in children.items()}))


def _manifest_counts(manifest: Mapping | None) -> dict[str, int]:
    """payload path → count, from a manifest's layers and data sections."""
    from stratum_core.publish.manifest import chunk_counts_from_manifest

    return {path: info["count"] for path, info in chunk_counts_from_manifest(manifest).items()
            if info.get("count") is not None}
