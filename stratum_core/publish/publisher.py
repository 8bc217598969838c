"""`publish`: plan chunks for a range of the dataset, pack them, and commit each batch atomically.

One batch = up to `chunks_per_commit` chunk files, their index files, the updated manifest.json and
README.md, in ONE commit pinned to the parent it was planned on. Each chunk is packed in memory and
pre-uploaded (LFS) right away, then its bytes are freed, so memory holds one chunk at a time (plus any
the Hub stores as small regular files, which the commit itself carries). Nothing is visible in the repo
before the commit, so a failure leaves it exactly as it was; losing a race re-reads and retries.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from stratum_core.discover import iter_image_dirs
from stratum_core.errors import ConfigError
from stratum_core.publish.config import PublishConfig, PublishResult
from stratum_core.publish.hub import HubClient, ParentMoved, PublishError, RepoState
from stratum_core.publish.layout import (ATTRIBUTION_PATH, CARD_PATH, DATA_DIR, MANIFEST_PATH, PARQUET_LAYERS,
                                         TEXT_LAYERS, ChunkRange, chunk_path, grid_cells, index_path,
                                         parse_chunk_path, split_by_size, tar_artifacts, widen)
from stratum_core.publish.manifest import build_manifest, chunk_counts_from_manifest, dumps, layer_ranges
from stratum_core.publish.card import build_card
from stratum_core.publish.pack import PackedChunk, pack_data, pack_tar, tar_member_bytes

log = logging.getLogger("stratum.publish")


@dataclass
class DatasetView:
    """The dataset's images in sorted order, with the file names each image directory holds."""

    root: Path
    ids: list[str]
    names: dict[str, set[str]]

    @classmethod
    def load(cls, root: Path) -> "DatasetView":
        names = {i: n for i, n in iter_image_dirs(root) if "metadata.json" in n}
        return cls(Path(root), sorted(names), names)

    def has_layer(self, image_id: str, layer: str) -> bool:
        return all(a.filename in self.names[image_id] for a in tar_artifacts(layer))


@dataclass
class ChunkJob:
    """A chunk to (re)pack: its layer, the positions it covers and the image ids that go in it."""

    layer: str  # "data" or an array layer
    chunk: ChunkRange
    image_ids: list[str]
    fill_layers: tuple[str, ...] = ()  # data chunks: layers whose columns are filled

    @property
    def path(self) -> str:
        return chunk_path(self.layer, self.chunk)


def publish(dataset_dir, config: PublishConfig, token: str | None = None,
            endpoint: str | None = None) -> PublishResult:
    dataset = DatasetView.load(Path(dataset_dir))
    stop = len(dataset.ids) if config.limit is None else min(len(dataset.ids), config.offset + config.limit)
    selection = range(min(config.offset, len(dataset.ids)), stop)
    result = PublishResult(config.hub_repo)
    if not selection:
        log.warning("publish: no images in [%d, %d) of %d in %s", config.offset, stop, len(dataset.ids), dataset_dir)
        return result
    hub = HubClient(config.hub_repo, token=token, endpoint=endpoint, retry=config.retry)
    hub.ensure_repo(config.private)
    state = hub.read_state()
    attribution = read_attribution(config, hub, state)
    jobs = plan_jobs(dataset, selection, config, state)
    log.info("publish %s: images %d-%d of %d, layers %s, %d chunk files", config.hub_repo, selection.start,
             selection.stop - 1, len(dataset.ids), ",".join(config.layers), len(jobs))
    with tempfile.TemporaryDirectory(prefix="stratum-publish-") as spill_dir:  # used only without memfd
        for start in range(0, len(jobs), config.chunks_per_commit):
            batch = jobs[start:start + config.chunks_per_commit]
            state = _publish_batch(hub, config, dataset, batch, state, attribution, result, Path(spill_dir))
    result.total_images = (state.manifest or {}).get("total_images", 0)
    return result


def read_attribution(config: PublishConfig, hub: HubClient, state: RepoState) -> str | None:
    """The --attribution-file text, else the repo's ATTRIBUTION.md (kept in the card), else None."""
    if not config.attribution_file:
        return hub.download(ATTRIBUTION_PATH, state.sha).decode("utf-8") if ATTRIBUTION_PATH in state.files else None
    try:
        return Path(config.attribution_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read --attribution-file {config.attribution_file}: {exc}") from exc


def _existing_ranges(state: RepoState, layer: str) -> list[ChunkRange]:
    ranges = []
    for path in state.files:
        parsed = parse_chunk_path(path)
        if parsed and parsed[0] == layer:
            ranges.append(parsed[1])
    return ranges


def plan_jobs(dataset: DatasetView, selection: range, config: PublishConfig, state: RepoState) -> list[ChunkJob]:
    """Chunks to pack, in position order: the data table plus one tar series per array layer."""
    jobs: list[ChunkJob] = []
    array_layers = [layer for layer in config.layers if layer not in TEXT_LAYERS]
    known = {layer: layer_ranges(state.manifest, layer) for layer in PARQUET_LAYERS}
    for cell in _cells(dataset, selection, config.rows_per_parquet, _existing_ranges(state, DATA_DIR)):
        # Keep columns another run already filled for this range, add the requested ones.
        fill = set(config.layers) & set(PARQUET_LAYERS)
        fill |= {layer for layer, ranges in known.items() if any(r.overlaps(cell) for r in ranges)}
        jobs.append(ChunkJob(DATA_DIR, cell, dataset.ids[cell.first:cell.last + 1], tuple(sorted(fill))))
    max_bytes = int(config.max_tar_mb * 1024 * 1024)
    for layer in array_layers:
        for cell in _cells(dataset, selection, config.images_per_tar, _existing_ranges(state, layer)):
            jobs.extend(_tar_jobs(dataset, layer, cell, max_bytes))
    jobs.sort(key=lambda j: (j.chunk.first, j.layer != DATA_DIR, j.layer))
    return jobs


def _cells(dataset: DatasetView, selection: range, size: int, existing: list[ChunkRange]) -> list[ChunkRange]:
    cells: list[ChunkRange] = []
    for cell in grid_cells(selection, size):
        cell, _ = widen(cell, existing + cells)
        if cell.last >= len(dataset.ids):
            raise ConfigError(f"the repo has chunks up to position {cell.last}, but {dataset.root} has only "
                              f"{len(dataset.ids)} images; publish from the full dataset")
        cells = [c for c in cells if not c.overlaps(cell)] + [cell]
    return sorted(cells)


def _tar_jobs(dataset: DatasetView, layer: str, cell: ChunkRange, max_bytes: int) -> list[ChunkJob]:
    """One tar per cell, split into consecutive parts where it would exceed `max_bytes`."""
    positions = [p for p in range(cell.first, cell.last + 1) if dataset.has_layer(dataset.ids[p], layer)]
    if not positions:
        return []
    sizes = [tar_member_bytes(dataset.root, layer, dataset.ids[p]) for p in positions]
    groups = split_by_size(positions, sizes, max_bytes)
    jobs = []
    for i, group in enumerate(groups):
        first = cell.first if i == 0 else group[0]
        last = cell.last if i == len(groups) - 1 else groups[i + 1][0] - 1
        jobs.append(ChunkJob(layer, ChunkRange(first, last), [dataset.ids[p] for p in group]))
    return jobs


def _pack(dataset: DatasetView, job: ChunkJob, spill_dir: Path) -> PackedChunk:
    if job.layer == DATA_DIR:
        packed = pack_data(dataset.root, job.image_ids, job.fill_layers, job.path, spill_dir)
    else:
        packed = pack_tar(dataset.root, job.layer, job.image_ids, job.path, spill_dir)
    packed.index["range"] = job.chunk.label
    return packed


def _unchanged(packed: PackedChunk, state: RepoState) -> bool:
    from stratum_core.publish.hub_compare import same_remote_content

    return same_remote_content(state.files.get(packed.path_in_repo), Path(packed.payload.path)) and \
        same_remote_content(state.files.get(index_path(packed.path_in_repo)), packed.index_bytes())


@dataclass
class Staged:
    """A packed chunk and, when its content differs from the repo's, its pre-uploaded commit operation."""

    packed: PackedChunk
    operation: object | None  # huggingface_hub CommitOperationAdd; None: already on the Hub


def _publish_batch(hub: HubClient, config: PublishConfig, dataset: DatasetView, batch: list[ChunkJob],
                   state: RepoState, attribution: str | None, result: PublishResult, spill_dir: Path) -> RepoState:
    """Pack and pre-upload the batch's chunks one at a time, then commit them together."""
    with ExitStack() as open_payloads:  # closes whatever is still held, also on failure
        staged = []
        for job in batch:
            packed = open_payloads.enter_context(_pack(dataset, job, spill_dir))
            staged.append(_stage(hub, packed, state))
        return _commit_batch(hub, config, staged, state, attribution, result)


def _stage(hub: HubClient, packed: PackedChunk, state: RepoState) -> Staged:
    """Pre-upload a changed chunk and free its bytes when the Hub took it as an LFS object.

    The commit then refers to it by sha256 only; a file the Hub keeps as a regular (small) file is
    sent inside the commit, so its payload stays open until then.
    """
    from huggingface_hub import CommitOperationAdd

    if _unchanged(packed, state):
        packed.close()
        return Staged(packed, None)
    operation = CommitOperationAdd(packed.path_in_repo, packed.payload.path)
    log.info("publish: uploading %s, %.1f MB", packed.path_in_repo, packed.size / 1e6)
    hub.preupload([operation])
    if getattr(operation, "_is_uploaded", False):
        packed.close()
    return Staged(packed, operation)


def _stale_paths(packed: list[PackedChunk], state: RepoState) -> list[str]:
    """Chunk files (and their indexes) of the same layer that the new chunks overlap but do not replace."""
    new_paths = {p.path_in_repo for p in packed}
    new = [parse_chunk_path(p) for p in new_paths]
    stale = []
    for path in state.files:
        parsed = parse_chunk_path(path)
        if parsed is None or path in new_paths:
            continue
        if any(n and n[0] == parsed[0] and n[1].overlaps(parsed[1]) for n in new):
            stale.append(path)
            if index_path(path) in state.files:
                stale.append(index_path(path))
    return sorted(stale)


def _commit_batch(hub: HubClient, config: PublishConfig, staged: list[Staged], state: RepoState,
                  attribution: str | None, result: PublishResult) -> RepoState:
    packed = [s.packed for s in staged]
    changed = [s.packed for s in staged if s.operation is not None]
    if not changed:  # overlapping chunks from another layout are reconcile's job, not a reason to commit
        result.skipped_chunks += [p.path_in_repo for p in packed]
        log.info("publish: %d chunk(s) already on the Hub with the same content, nothing to commit", len(packed))
        return state
    payload = [s.operation for s in staged if s.operation is not None]
    indexes = [(index_path(p.path_in_repo), p.index_bytes()) for p in changed]
    for attempt in range(config.commit_retries + 1):
        stale = _stale_paths(changed, state)
        operations = _operations(config, changed, indexes, payload, stale, state, attribution)
        label = f"{changed[0].index['range']}..{changed[-1].index['range']}"
        try:
            oid = hub.commit(operations, f"stratum publish {','.join(config.layers)} {label}", state.sha)
        except ParentMoved:
            log.warning("publish: the repo moved during the commit; re-reading it (attempt %d)", attempt + 1)
            state = hub.read_state()
            continue
        result.commits.append(oid)
        result.uploaded_files += [p.path_in_repo for p in changed]
        result.bytes_uploaded += sum(p.size for p in changed)
        for p in changed:
            result.images[p.layer] = result.images.get(p.layer, 0) + p.index["count"]
        result.skipped_chunks += [p.path_in_repo for p in packed if p not in changed]
        return hub.read_state()
    raise PublishError(f"{config.hub_repo} kept moving; gave up after {config.commit_retries + 1} commit attempts")


def _operations(config: PublishConfig, changed: list[PackedChunk], indexes: list[tuple[str, bytes]], payload: list,
                stale: list[str], state: RepoState, attribution: str | None) -> list:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    info = chunk_counts_from_manifest(state.manifest)
    for path in stale:
        info.pop(path, None)
    for p in changed:
        info[p.path_in_repo] = {"count": p.index["count"], "counts": p.index.get("counts", {}), "exact": True}
    present = set(state.files) - set(stale) | {p.path_in_repo for p in changed}
    for path in present:
        if parse_chunk_path(path) and path not in info:
            info[path] = {"count": None, "exact": False}  # unknown chunk: counted from its label
    info = {path: value for path, value in info.items() if path in present}
    manifest = build_manifest(info)
    card = build_card(config.hub_repo, manifest, config.license, attribution)
    operations = list(payload)
    operations += [CommitOperationAdd(path, data) for path, data in indexes]
    operations += [CommitOperationDelete(path) for path in stale]
    operations.append(CommitOperationAdd(MANIFEST_PATH, dumps(manifest)))
    operations.append(CommitOperationAdd(CARD_PATH, card.encode()))
    if config.attribution_file:
        operations.append(CommitOperationAdd(ATTRIBUTION_PATH, attribution.encode()))
    return operations
