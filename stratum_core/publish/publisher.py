"""`publish`: plan chunks for a range of the dataset, pack them, and commit each batch atomically.

One batch = up to `chunks_per_commit` chunk files, their index files, the updated manifest.json and
README.md, in ONE commit pinned to the parent it was planned on. Each chunk is packed in memory and
pre-uploaded (LFS) right away, then its bytes are freed (its memory kept for the next chunk to reuse), so
memory holds one chunk at a time (plus any the Hub stores as small regular files, which the commit itself
carries). Nothing is visible in the repo before the commit, so a failure leaves it exactly as it was.
Losing a race (the parent moved) re-reads the repo and re-plans the batch on the new head, so the commit is
the union of both publishers' work; chunks whose job and remote copy did not change are not packed again.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from itertools import zip_longest
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
from stratum_core.publish.pack import PackedChunk, PayloadPool, pack_data, pack_tar, tar_member_bytes

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

    @property
    def key(self) -> tuple:
        """Equal keys pack to the same bytes (from the same local files)."""
        return self.layer, self.chunk, tuple(self.image_ids), self.fill_layers


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
    check_positions(hub, dataset, state, jobs)
    log.info("publish %s: images %d-%d of %d, layers %s, %d chunk files", config.hub_repo, selection.start,
             selection.stop - 1, len(dataset.ids), ",".join(config.layers), len(jobs))
    with tempfile.TemporaryDirectory(prefix="stratum-publish-") as spill_dir:  # used only without memfd
        with PayloadPool(Path(spill_dir)) as pool:  # freed chunks' memory, reused by the next chunk
            state = _publish_jobs(hub, config, dataset, selection, jobs, state, attribution, result, pool)
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


def check_positions(hub: HubClient, dataset: DatasetView, state: RepoState, jobs: list[ChunkJob]) -> None:
    """Refuse when the repo's data chunks that the jobs overlap, or the last one before them, list other ids
    than the dataset now has at those positions: images added since that sort earlier shift every later
    position, so rewriting or extending the repo would duplicate some images and lose others."""
    cells = [job.chunk for job in jobs if job.layer == DATA_DIR]
    if not cells:
        return
    existing = sorted(_existing_ranges(state, DATA_DIR))
    overlapped = [chunk for chunk in existing if any(chunk.overlaps(c) for c in cells)]
    before = [chunk for chunk in existing if chunk.last < cells[0].first][-1:]
    # An added or removed image shifts every later position, so the last chunk it precedes shows it: the
    # first and last overlapped chunks and the one before them are enough (one index download each,
    # not one per chunk of a large republish).
    for chunk in dict.fromkeys(before + overlapped[:1] + overlapped[-1:]):
        path = chunk_path(DATA_DIR, chunk)
        published = _published_ids(hub, state, path)
        if published is None:
            continue
        pairs = zip_longest(published, dataset.ids[chunk.first:chunk.last + 1])
        differing = next(((i, was, now) for i, (was, now) in enumerate(pairs, chunk.first) if was != now), None)
        if differing:
            position, was, now = differing
            raise ConfigError(
                f"{path} in {hub.repo_id} lists {was!r} at position {position}, but {dataset.root} now has "
                f"{now!r} there: images added (or removed) since then shift the positions of range {chunk.label}. "
                f"Publish to a new repo, or delete the repo's chunks from position {position} on, run "
                "`stratum reconcile` and publish them again")


def _published_ids(hub: HubClient, state: RepoState, path: str) -> list[str] | None:
    """The ids a chunk's index lists; None when it has no (readable) index, so it cannot be checked."""
    return (hub.read_json(state, index_path(path)) or {}).get("ids")


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


def _pack(dataset: DatasetView, job: ChunkJob, pool: PayloadPool) -> PackedChunk:
    if job.layer == DATA_DIR:
        packed = pack_data(dataset.root, job.image_ids, job.fill_layers, job.path, pool=pool)
    else:
        packed = pack_tar(dataset.root, job.layer, job.image_ids, job.path, pool=pool)
    packed.index["range"] = job.chunk.label
    return packed


def _publish_jobs(hub: HubClient, config: PublishConfig, dataset: DatasetView, selection: range,
                  jobs: list[ChunkJob], state: RepoState, attribution: str | None, result: PublishResult,
                  pool: PayloadPool) -> RepoState:
    """Commit the jobs batch by batch. Whenever someone else's commit lands (our commit lost the race, or one
    came after it), the rest is re-planned on the new head: a rival may have filled other columns of the
    same parquet."""
    done: set[tuple] = set()  # keys of the jobs this run has committed or found on the Hub
    staged: dict[tuple, Staged] = {}  # the current batch, kept across lost races
    moves = 0
    try:
        while jobs:
            batch, commits = jobs[:config.chunks_per_commit], len(result.commits)
            try:
                state = _publish_batch(hub, config, dataset, batch, state, attribution, result, pool, staged)
            except ParentMoved:
                moves += 1
                if moves > config.commit_retries:
                    raise PublishError(f"{config.hub_repo} kept moving; gave up after {moves} commit attempts") \
                        from None
                log.warning("publish: the repo moved during the commit; re-planning on the new head (attempt %d)",
                            moves)
                state = hub.read_state()
                jobs = _replan(hub, config, dataset, selection, state, done)
                continue
            moves = 0
            done |= {job.key for job in batch}
            jobs = jobs[len(batch):]
            _close_all(staged)
            if jobs and len(result.commits) > commits and state.sha != result.commits[-1]:
                log.info("publish: another commit landed after ours; re-planning the rest on the new head")
                jobs = _replan(hub, config, dataset, selection, state, done)
    finally:
        _close_all(staged)
    return state


def _replan(hub: HubClient, config: PublishConfig, dataset: DatasetView, selection: range, state: RepoState,
            done: set[tuple]) -> list[ChunkJob]:
    """The jobs still to do on the repo as it is now (a job already committed by this run is not redone)."""
    jobs = [job for job in plan_jobs(dataset, selection, config, state) if job.key not in done]
    check_positions(hub, dataset, state, jobs)
    return jobs


@dataclass
class Staged:
    """A packed chunk and, when its content differs from the repo's, its pre-uploaded commit operation."""

    packed: PackedChunk
    operation: object | None  # huggingface_hub CommitOperationAdd; None: already on the Hub
    seen: tuple  # the repo's copies of the chunk and its index when it was staged


def _remote_copies(path: str, state: RepoState) -> tuple:
    return state.files.get(path), state.files.get(index_path(path))


def _on_hub(packed: PackedChunk, state: RepoState, operation=None) -> bool:
    """Does `state` hold this chunk and its index? A payload freed after its pre-upload is compared by the
    sha256 the upload computed."""
    from stratum_core.publish.hub_compare import same_remote_content

    remote = state.files.get(packed.path_in_repo)
    if packed.payload.closed:
        info = operation.upload_info
        same = remote is not None and remote.size == info.size and remote.sha256 == info.sha256.hex()
    else:
        same = same_remote_content(remote, Path(packed.payload.path))
    return same and same_remote_content(state.files.get(index_path(packed.path_in_repo)), packed.index_bytes())


def _close_all(staged: dict[tuple, Staged]) -> None:
    for entry in staged.values():
        entry.packed.close()
    staged.clear()


def _publish_batch(hub: HubClient, config: PublishConfig, dataset: DatasetView, batch: list[ChunkJob],
                   state: RepoState, attribution: str | None, result: PublishResult, pool: PayloadPool,
                   staged: dict[tuple, Staged]) -> RepoState:
    """Pack and pre-upload the batch's chunks one at a time, then commit them together.

    `staged` holds what an earlier try of this batch packed; whatever the re-plan dropped is freed.
    """
    for key in set(staged) - {job.key for job in batch}:
        staged.pop(key).packed.close()
    for job in batch:
        staged[job.key] = _restage(hub, dataset, job, staged.pop(job.key, None), state, pool)
    return _commit_batch(hub, config, [staged[job.key] for job in batch], state, attribution, result)


def _restage(hub: HubClient, dataset: DatasetView, job: ChunkJob, previous: Staged | None, state: RepoState,
             pool: PayloadPool) -> Staged:
    """`previous` as it is while the repo's copy of its chunk is the one it was staged against; marked as on
    the Hub when the repo now holds exactly it (a commit whose reply was lost was applied); else packed anew."""
    seen = _remote_copies(job.path, state)
    if previous is not None:
        if previous.seen == seen:
            return previous
        if previous.operation is not None and _on_hub(previous.packed, state, previous.operation):
            previous.packed.close()
            return Staged(previous.packed, None, seen)
        previous.packed.close()
    packed = _pack(dataset, job, pool)
    try:
        return _stage(hub, packed, state)
    except BaseException:
        packed.close()
        raise


def _stage(hub: HubClient, packed: PackedChunk, state: RepoState) -> Staged:
    """Pre-upload a changed chunk and free its bytes when the Hub took it as an LFS object.

    The commit then refers to it by sha256 only; a file the Hub keeps as a regular (small) file is
    sent inside the commit, so its payload stays open until then.
    """
    from huggingface_hub import CommitOperationAdd

    seen = _remote_copies(packed.path_in_repo, state)
    if _on_hub(packed, state):
        packed.close()
        return Staged(packed, None, seen)
    operation = CommitOperationAdd(packed.path_in_repo, packed.payload.path)
    log.info("publish: uploading %s, %.1f MB", packed.path_in_repo, packed.size / 1e6)
    hub.preupload([operation])
    if getattr(operation, "_is_uploaded", False):
        packed.close()
    return Staged(packed, operation, seen)


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
    """One commit on top of `state`, or none when every chunk is already on the Hub; raises ParentMoved."""
    packed = [s.packed for s in staged]
    changed = [s.packed for s in staged if s.operation is not None]
    if not changed:  # overlapping chunks from another layout are reconcile's job, not a reason to commit
        result.skipped_chunks += [p.path_in_repo for p in packed]
        log.info("publish: %d chunk(s) already on the Hub with the same content, nothing to commit", len(packed))
        return state
    payload = [s.operation for s in staged if s.operation is not None]
    indexes = [(index_path(p.path_in_repo), p.index_bytes()) for p in changed]
    stale = _stale_paths(changed, state)
    operations = _operations(config, changed, indexes, payload, stale, state, attribution)
    label = f"{changed[0].index['range']}..{changed[-1].index['range']}"
    oid = hub.commit(operations, f"stratum publish {','.join(config.layers)} {label}", state.sha)
    result.commits.append(oid)
    result.uploaded_files += [p.path_in_repo for p in changed]
    result.bytes_uploaded += sum(p.size for p in changed)
    for p in changed:
        result.images[p.layer] = result.images.get(p.layer, 0) + p.index["count"]
    result.skipped_chunks += [p.path_in_repo for p in packed if p not in changed]
    return hub.read_state()


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
