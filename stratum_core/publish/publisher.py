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

import json
import logging
import tempfile
from dataclasses import dataclass, field, replace
from itertools import zip_longest
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from stratum_core.artifacts import BY_NAME
from stratum_core.discover import iter_image_dirs
from stratum_core.errors import ConfigError
from stratum_core.publish.card import build_card
from stratum_core.publish.config import PublishConfig, PublishResult
from stratum_core.publish.hub import HubClient, ParentMoved, PublishError, RepoState
from stratum_core.publish.layout import (ATTRIBUTION_PATH, CARD_PATH, DATA_DIR, MANIFEST_PATH, PARQUET_LAYERS,
                                         TEXT_LAYERS, ChunkFile, ChunkRange, folder_of, index_entry, index_path,
                                         list_chunks, parse_chunk_path, parse_index_path, range_label,
                                         tar_artifacts)
from stratum_core.publish.manifest import (build_manifest, chunk_counts_from_manifest, dumps, layer_ranges,
                                           manifest_provenance)
from stratum_core.publish.pack import PackedChunk, PayloadPool, pack_data, pack_tar, tar_member_bytes
from stratum_core.publish.planning import LayoutPlan, merged_index_path, plan_layout

log = logging.getLogger("stratum.publish")

INDEX_VERSION = 2
DATA_ROW_BYTES = 3_200  # a parquet row with caption, pose and CLS, zstd-compressed (for planning only)


@dataclass
class DatasetView:
    """The dataset's images in position order, with the file names each image directory holds.

    Positions: the sorted ids, or, when the dataset has registered shards, shard registration order
    (sorted within a shard), so a new shard only ever appends. `shards` lists (key, first, stop) per shard.
    """

    root: Path
    ids: list[str]
    names: dict[str, set[str]]
    shards: list[tuple[str, int, int]] = field(default_factory=list)
    _sizes: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, root: Path) -> "DatasetView":
        metadata = BY_NAME["metadata"].filename
        names = {i: n for i, n in iter_image_dirs(root) if metadata in n}
        registered = _registered_shards(Path(root))
        if not registered:
            return cls(Path(root), sorted(names), names)
        ids: list[str] = []
        spans = []
        seen: set[str] = set()
        for shard in registered:
            start = len(ids)
            fresh = sorted(i for i in shard.image_ids if i in names and i not in seen)
            ids += fresh
            seen.update(fresh)
            spans.append((shard.key, start, len(ids)))
        outside = len(names) - len(seen)
        if outside:
            log.warning("publish: %d image(s) in %s belong to no registered shard and are not published "
                        "(register them: `stratum shards register`)", outside, root)
        return cls(Path(root), ids, names, spans)

    def has_layer(self, image_id: str, layer: str) -> bool:
        return all(a.filename in self.names[image_id] for a in tar_artifacts(layer))

    def sizes(self, layer: str, start: int, stop: int) -> np.ndarray:
        """Bytes each position in [start, stop) adds to its `layer` chunk (0: lacks the layer); from stat only."""
        cache = self._sizes.setdefault(layer, np.full(len(self.ids), -1, dtype=np.int32))  # 40 MB per 10M
        todo = np.flatnonzero(cache[start:stop] < 0) + start
        for position in todo.tolist():
            image_id = self.ids[position]
            if layer == DATA_DIR:
                cache[position] = DATA_ROW_BYTES
            else:
                cache[position] = tar_member_bytes(self.root, layer, image_id) if self.has_layer(image_id, layer) \
                    else 0
        return cache[start:stop]

    def shards_in(self, selection: range) -> dict[str, str]:
        """Shard key → range label of its positions, for the shards with images in `selection`."""
        return {key: range_label(max(first, selection.start), min(stop, selection.stop) - 1)
                for key, first, stop in self.shards if first < selection.stop and stop > selection.start
                and stop > first}


def _registered_shards(root: Path) -> list:
    """The shards registered under `root`, in registration order (creation time, then key)."""
    from stratum_core.shards import load_shard, shard_keys

    shards = [load_shard(root, key) for key in shard_keys(root)]
    return sorted(shards, key=lambda s: (s.created, s.key))


@dataclass
class ChunkJob:
    """A chunk to (re)pack: its layer, the positions it covers, the image ids that go in it and its path."""

    layer: str  # "data" or an array layer
    chunk: ChunkRange
    image_ids: list[str]
    fill_layers: tuple[str, ...] = ()  # data chunks: layers whose columns are filled
    path: str = ""

    @property
    def key(self) -> tuple:
        """Equal keys pack to the same bytes (from the same local files)."""
        return self.layer, self.chunk, tuple(self.image_ids), self.fill_layers, self.path


def publish(dataset_dir, config: PublishConfig, token: str | None = None,
            endpoint: str | None = None) -> PublishResult:
    dataset = DatasetView.load(Path(dataset_dir))
    selection = _selection(dataset, config)
    result = PublishResult(config.hub_repo)
    if not selection:
        log.warning("publish: no images in [%d, %d) of %d in %s", config.offset, selection.stop, len(dataset.ids),
                    dataset_dir)
        return result
    result.provenance = layers_provenance(dataset, selection, config)  # refuses mixed revisions: nothing uploaded
    hub = HubClient(config.hub_repo, token=token, endpoint=endpoint, retry=config.retry,
                    commits_per_hour=config.commits_per_hour)
    hub.ensure_repo(config.private)
    state = hub.read_state()
    attribution = read_attribution(config, hub, state)
    jobs, layout = plan_jobs(dataset, selection, config, state)
    _refuse_over_limits(layout, config)
    check_positions(hub, dataset, state, jobs)
    result.shards = dataset.shards_in(selection)
    log.info("publish %s: images %d-%d of %d, layers %s, %d chunk files", config.hub_repo, selection.start,
             selection.stop - 1, len(dataset.ids), ",".join(config.layers), len(jobs))
    hub.seed_pace()
    with tempfile.TemporaryDirectory(prefix="stratum-publish-") as spill_dir:  # used only without memfd
        with PayloadPool(Path(spill_dir)) as pool:  # freed chunks' memory, reused by the next chunk
            state = _publish_jobs(hub, config, dataset, selection, jobs, state, attribution, result, pool,
                                  layout.chunking)
    result.total_images = (state.manifest or {}).get("total_images", 0)
    return result


def plan(dataset_dir, config: PublishConfig, token: str | None = None, endpoint: str | None = None,
         offline: bool = False) -> LayoutPlan:
    """What `publish` would upload and the repo it would leave (the repo is read, never written; `offline`:
    plan as for an empty repo). Reads no array data: sizes come from `stat`."""
    dataset = DatasetView.load(Path(dataset_dir))
    selection = _selection(dataset, config)
    state = RepoState("")
    if not offline:
        hub = HubClient(config.hub_repo, token=token, endpoint=endpoint, retry=config.retry)
        state = hub.read_state_if_exists() or state
    layout = plan_jobs(dataset, selection, config, state)[1]
    # What publish would record, without refusing: the plan says which layers publish would refuse.
    layout.provenance = selected_layers_provenance(dataset, selection, config.layers, allow_mixed=True)
    layout.allow_mixed_revisions = config.allow_mixed_revisions
    return layout


def publish_new(dataset_dir, config: PublishConfig, token: str | None = None, endpoint: str | None = None,
                ready=None) -> PublishResult:
    """Publish only the shards after the repo's last published position (a growing, sharded dataset).

    `ready(shard_key) -> bool` says whether a shard is finished; publishing stops before the first one that
    is not (positions must stay contiguous). Without registered shards: every image after the last one.
    `config.offset`/`limit` still bound what is published.
    """
    dataset = DatasetView.load(Path(dataset_dir))
    hub = HubClient(config.hub_repo, token=token, endpoint=endpoint, retry=config.retry)
    state = hub.read_state_if_exists()
    done = max(published_end(state, config.layers) if state else 0, config.offset)  # offset/limit still bound it
    stop = _selection(dataset, config).stop
    for key, first, shard_stop in dataset.shards:
        if shard_stop > done and ready is not None and not ready(key):
            stop = min(stop, max(first, done))
            break
    if stop <= done:
        log.info("publish: nothing new after position %d in %s", done, dataset_dir)
        return PublishResult(config.hub_repo, total_images=(state.manifest or {}).get("total_images", 0)
                             if state else 0)
    return publish(dataset_dir, replace(config, offset=done, limit=stop - done), token=token, endpoint=endpoint)


def shard_ready(dataset_dir, layers) -> Callable[[str], bool]:
    """`ready` for publish_new: a shard is ready when every image has finished metadata and each of `layers`
    (an artifact or a failure record: a failed image never blocks the shards after it)."""
    from stratum_core.shards import load_shard, shard_completion

    def ready(key: str) -> bool:
        completion = shard_completion(Path(dataset_dir), load_shard(Path(dataset_dir), key))
        return all(completion.done.get(p, 0) + completion.failed.get(p, 0) >= completion.total
                   for p in ("metadata", *layers))
    return ready


def published_end(state: RepoState, layers=()) -> int:
    """One past the last position that the repo's data chunks, and the chunks of each of `layers`, all cover
    (0 for an empty repo, or for a layer not published yet: adding a layer publishes it from the start)."""
    def end(ranges) -> int:
        return max((r.last + 1 for r in ranges), default=0)

    ends = [end(c.range for c in list_chunks(state.files, DATA_DIR))]
    for layer in layers:
        if layer in TEXT_LAYERS:
            ends.append(end(layer_ranges(state.manifest, layer)))
        else:
            ends.append(end(c.range for c in list_chunks(state.files, layer)))
    return min(ends)


def layers_provenance(dataset: DatasetView, selection: range, config: PublishConfig) -> dict[str, dict]:
    """Per published layer, the model, revision, pass version and precision that produced the selected images
    that have it (`provenance.layer_provenance`). Raises ConfigError when a layer mixes revisions, unless
    `config.allow_mixed_revisions` (then the entry lists the `variants`). Images without a record count as
    `unknown` and never cause a refusal; a layer with no record at all (a dataset from before provenance) is
    left out, so its manifest stays as it was."""
    infos = selected_layers_provenance(dataset, selection, config.layers, config.allow_mixed_revisions)
    return {layer: info for layer, info in infos.items() if info.get("images")}


def selected_layers_provenance(dataset: DatasetView, selection: range, layers: Sequence[str],
                               allow_mixed: bool) -> dict[str, dict]:
    """`provenance.layer_provenance` of each of `layers` over the selected images that have it, every layer
    listed (one without any record: `images` 0 and its `unknown` count). Raises on mixed revisions unless
    `allow_mixed`."""
    from stratum_core import provenance
    from stratum_core.artifacts import pass_files

    out = {}
    for layer in layers:
        files = pass_files(layer)
        ids = [i for i in (dataset.ids[p] for p in selection) if files <= dataset.names[i]]
        out[layer] = provenance.layer_provenance(dataset.root, ids, layer, allow_mixed=allow_mixed)
    return out


def _selection(dataset: DatasetView, config: PublishConfig) -> range:
    stop = len(dataset.ids) if config.limit is None else min(len(dataset.ids), config.offset + config.limit)
    return range(min(config.offset, len(dataset.ids)), stop)


def _refuse_over_limits(layout: LayoutPlan, config: PublishConfig) -> None:
    if not layout.ok:
        raise ConfigError("the planned repo breaks the Hub's limits: " + "; ".join(layout.problems) +
                          " (raise --images-per-tar / --max-tar-mb, or see `stratum publish --plan`)")


def read_attribution(config: PublishConfig, hub: HubClient, state: RepoState) -> str | None:
    """The --attribution-file text, else the repo's ATTRIBUTION.md (kept in the card), else None."""
    if not config.attribution_file:
        return hub.download(ATTRIBUTION_PATH, state.sha).decode("utf-8") if ATTRIBUTION_PATH in state.files else None
    try:
        return Path(config.attribution_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read --attribution-file {config.attribution_file}: {exc}") from exc


def plan_jobs(dataset: DatasetView, selection: range, config: PublishConfig,
              state: RepoState) -> tuple[list[ChunkJob], LayoutPlan]:
    """Chunks to pack, in commit order (the data table, then one tar series per array layer), and the plan."""
    layout = plan_layout(selection, len(dataset.ids), config.layers, dataset.sizes, config, state.files,
                         state.manifest)
    known = {layer: layer_ranges(state.manifest, layer) for layer in PARQUET_LAYERS}
    jobs: list[ChunkJob] = []
    for planned in layout.chunks:
        cell = planned.chunk
        positions = planned.positions.tolist() if planned.positions is not None else range(cell.first, cell.last + 1)
        ids = [dataset.ids[p] for p in positions]
        fill: tuple[str, ...] = ()
        if planned.layer == DATA_DIR:
            # Keep columns another run already filled for this range, add the requested ones.
            wanted = set(config.layers) & set(PARQUET_LAYERS)
            wanted |= {layer for layer, ranges in known.items() if any(r.overlaps(cell) for r in ranges)}
            fill = tuple(sorted(wanted))
        jobs.append(ChunkJob(planned.layer, cell, ids, fill, planned.path))
    return jobs, layout


def check_positions(hub: HubClient, dataset: DatasetView, state: RepoState, jobs: list[ChunkJob]) -> None:
    """Refuse when the repo's data chunks that the jobs overlap, or the last one before them, list other ids
    than the dataset now has at those positions: images added since that sort earlier shift every later
    position, so rewriting or extending the repo would duplicate some images and lose others."""
    cells = [job.chunk for job in jobs if job.layer == DATA_DIR]
    if not cells:
        return
    existing = list_chunks(state.files, DATA_DIR)
    overlapped = [c for c in existing if any(c.range.overlaps(cell) for cell in cells)]
    before = [c for c in existing if c.range.last < cells[0].first][-1:]
    # An added or removed image shifts every later position, so the last chunk it precedes shows it: the
    # first and last overlapped chunks and the one before them are enough (one index download each,
    # not one per chunk of a large republish).
    for chunk in dict.fromkeys(before + overlapped[:1] + overlapped[-1:]):
        published = _published_ids(hub, state, chunk)
        if published is None:
            continue
        pairs = zip_longest(published, dataset.ids[chunk.range.first:chunk.range.last + 1])
        differing = next(((i, was, now) for i, (was, now) in enumerate(pairs, chunk.range.first) if was != now),
                         None)
        if differing:
            position, was, now = differing
            raise ConfigError(
                f"{chunk.path} in {hub.repo_id} lists {was!r} at position {position}, but {dataset.root} now has "
                f"{now!r} there: images added (or removed) since then shift the positions of range "
                f"{chunk.range.label}. Publish to a new repo, or delete the repo's chunks from position {position} "
                "on, run `stratum reconcile` and publish them again (a dataset with registered shards only "
                "ever appends)")


def _published_ids(hub: HubClient, state: RepoState, chunk: ChunkFile) -> list[str] | None:
    """The ids a chunk's index lists; None when it has no (readable) index, so it cannot be checked."""
    if chunk.index is None:
        return None
    return (index_entry(hub.read_json(state, chunk.index), chunk) or {}).get("ids")


def _pack(dataset: DatasetView, job: ChunkJob, pool: PayloadPool) -> PackedChunk:
    if job.layer == DATA_DIR:
        packed = pack_data(dataset.root, job.image_ids, job.fill_layers, job.path, pool=pool)
    else:
        packed = pack_tar(dataset.root, job.layer, job.image_ids, job.path, pool=pool)
    packed.index["range"] = job.chunk.label
    return packed


def _publish_jobs(hub: HubClient, config: PublishConfig, dataset: DatasetView, selection: range,
                  jobs: list[ChunkJob], state: RepoState, attribution: str | None, result: PublishResult,
                  pool: PayloadPool, chunking: dict) -> RepoState:
    """Commit the jobs batch by batch. Whenever someone else's commit lands (our commit lost the race, or one
    came after it), the rest is re-planned on the new head: a rival may have filled other columns of the
    same parquet."""
    done: set[tuple] = set()  # keys of the jobs this run has committed or found on the Hub
    staged: dict[tuple, Staged] = {}  # the current batch, kept across lost races
    grids = {layer: c.to_json() for layer, c in chunking.items()}
    moves = 0
    try:
        while jobs:
            batch, commits = jobs[:config.chunks_per_commit], len(result.commits)
            try:
                state = _publish_batch(hub, config, dataset, batch, state, attribution, result, pool, staged,
                                       grids)
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
    jobs = [job for job in plan_jobs(dataset, selection, config, state)[0] if job.key not in done]
    check_positions(hub, dataset, state, jobs)
    return jobs


@dataclass
class Staged:
    """A packed chunk and, when its content differs from the repo's, its pre-uploaded commit operation."""

    packed: PackedChunk
    operation: object | None  # huggingface_hub CommitOperationAdd; None: already on the Hub
    seen: tuple  # the repo's copies of the chunk and its index entry when it was staged


def _remote_entry(hub: HubClient, state: RepoState, path: str) -> dict | None:
    """The repo's index entry of the chunk at `path` (from its flat or batch index), None without one."""
    chunk = state.chunk(path)
    if chunk is None or chunk.index is None:
        return None
    return index_entry(hub.read_json(state, chunk.index), chunk)


def _remote_copies(hub: HubClient, path: str, state: RepoState) -> tuple:
    entry = _remote_entry(hub, state, path)
    return state.files.get(path), json.dumps(entry, sort_keys=True) if entry is not None else None


def _on_hub(hub: HubClient, packed: PackedChunk, state: RepoState, operation=None) -> bool:
    """Does `state` hold this chunk and its index entry? A payload freed after its pre-upload is compared by the
    sha256 the upload computed."""
    from stratum_core.publish.hub_compare import same_remote_content

    remote = state.files.get(packed.path_in_repo)
    if packed.payload.closed:
        info = operation.upload_info
        same = remote is not None and remote.size == info.size and remote.sha256 == info.sha256.hex()
    else:
        same = same_remote_content(remote, Path(packed.payload.path))
    return same and _remote_entry(hub, state, packed.path_in_repo) == _plain(packed.index)


def _plain(entry: dict) -> dict:
    """An index entry as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(entry))


def _close_all(staged: dict[tuple, Staged]) -> None:
    for entry in staged.values():
        entry.packed.close()
    staged.clear()


def _publish_batch(hub: HubClient, config: PublishConfig, dataset: DatasetView, batch: list[ChunkJob],
                   state: RepoState, attribution: str | None, result: PublishResult, pool: PayloadPool,
                   staged: dict[tuple, Staged], grids: dict) -> RepoState:
    """Pack and pre-upload the batch's chunks one at a time, then commit them together.

    `staged` holds what an earlier try of this batch packed; whatever the re-plan dropped is freed.
    """
    for key in set(staged) - {job.key for job in batch}:
        staged.pop(key).packed.close()
    for job in batch:
        staged[job.key] = _restage(hub, dataset, job, staged.pop(job.key, None), state, pool)
    return _commit_batch(hub, config, [staged[job.key] for job in batch], state, attribution, result, grids)


def _restage(hub: HubClient, dataset: DatasetView, job: ChunkJob, previous: Staged | None, state: RepoState,
             pool: PayloadPool) -> Staged:
    """`previous` as it is while the repo's copy of its chunk is the one it was staged against; marked as on
    the Hub when the repo now holds exactly it (a commit whose reply was lost was applied); else packed anew."""
    seen = _remote_copies(hub, job.path, state)
    if previous is not None:
        if previous.seen == seen:
            return previous
        if previous.operation is not None and _on_hub(hub, previous.packed, state, previous.operation):
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

    seen = _remote_copies(hub, packed.path_in_repo, state)
    if _on_hub(hub, packed, state):
        packed.close()
        return Staged(packed, None, seen)
    operation = CommitOperationAdd(packed.path_in_repo, packed.payload.path)
    log.info("publish: uploading %s, %.1f MB", packed.path_in_repo, packed.size / 1e6)
    hub.preupload([operation])
    if getattr(operation, "_is_uploaded", False):
        packed.close()
    return Staged(packed, operation, seen)


def _stale_paths(packed: list[PackedChunk], state: RepoState) -> list[str]:
    """Chunk files of the same layer that the new chunks overlap but do not replace."""
    new_paths = {p.path_in_repo for p in packed}
    new = [parse_chunk_path(p) for p in new_paths]
    stale = []
    for chunk in list_chunks(state.files):
        if chunk.path in new_paths:
            continue
        if any(n and n[0] == chunk.layer and n[1].overlaps(chunk.range) for n in new):
            stale.append(chunk.path)
    return sorted(stale)


def _commit_batch(hub: HubClient, config: PublishConfig, staged: list[Staged], state: RepoState,
                  attribution: str | None, result: PublishResult, grids: dict) -> RepoState:
    """One commit on top of `state`, or none when every chunk is already on the Hub; raises ParentMoved."""
    packed = [s.packed for s in staged]
    changed = [s.packed for s in staged if s.operation is not None]
    if not changed:  # overlapping chunks from another layout are reconcile's job, not a reason to commit
        result.skipped_chunks += [p.path_in_repo for p in packed]
        log.info("publish: %d chunk(s) already on the Hub with the same content, nothing to commit", len(packed))
        return state
    payload = [s.operation for s in staged if s.operation is not None]
    stale = _stale_paths(changed, state)
    index_files, index_deletes = index_updates(hub, state, {p.path_in_repo: p.index for p in changed}, stale,
                                               config.chunks_per_commit)
    operations = _operations(config, changed, index_files, payload, stale + index_deletes, state, attribution,
                             grids, result.provenance)
    label = f"{changed[0].index['range']}..{changed[-1].index['range']}"
    oid = hub.commit(operations, f"stratum publish {','.join(config.layers)} {label}", state.sha)
    result.commits.append(oid)
    result.uploaded_files += [p.path_in_repo for p in changed]
    result.bytes_uploaded += sum(p.size for p in changed)
    for p in changed:
        result.images[p.layer] = result.images.get(p.layer, 0) + p.index["count"]
    result.skipped_chunks += [p.path_in_repo for p in packed if p not in changed]
    return hub.read_state()


def index_updates(hub: HubClient, state: RepoState, entries: dict[str, dict], deleted: list[str],
                  absorb_below: int = 0) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Index files to write and to delete for a commit that adds `entries` (chunk path → index entry) and
    deletes the chunks `deleted`.

    A flat chunk keeps its own index beside it. Nested chunks share ONE index per folder and batch, named by
    the span of its chunks; it absorbs the folder's index files whose spans it overlaps, so spans never
    overlap and every nested chunk has exactly one index, and the folder's nearest index before it when that
    lists fewer than `absorb_below` chunks (so publishing a few chunks at a time does not add an index file
    each time; the absorbed entries are carried over unchanged). Entries of deleted chunks are dropped.
    """
    gone = set(deleted)
    writes: dict[str, dict] = {}
    deletes: set[str] = set()
    by_folder: dict[tuple[str, str], dict[str, dict]] = {}
    for path, entry in entries.items():
        folder = folder_of(path)
        if folder is None:
            writes[index_path(path)] = _plain(entry)
        else:
            by_folder.setdefault((path.split("/", 1)[0], folder), {})[path] = entry
    live = lambda p: p not in gone  # noqa: E731
    for (layer, folder), mine in by_folder.items():
        existing = {p: parsed[2] for p in state.files if (parsed := parse_index_path(p))
                    and parsed[:2] == (layer, folder)}
        ranges = [parse_chunk_path(p)[1] for p in mine]
        small = lambda p: len((hub.read_json(state, p) or {}).get("chunks") or {}) < absorb_below  # noqa: E731
        path, replaced = merged_index_path(layer, folder, ranges, existing, small)
        chunks: dict[str, dict] = {}
        for old in replaced + ([path] if path in existing else []):
            chunks.update(live_entries(hub, state, old, live))
        chunks.update({parse_chunk_path(p)[1].label: _plain(e) for p, e in mine.items()})
        writes[path] = {"version": INDEX_VERSION, "chunks": dict(sorted(chunks.items()))}
        deletes |= set(replaced)
    for chunk in list_chunks(state.files):  # deleted chunks listed in index files this commit leaves alone
        if chunk.path not in gone or chunk.index is None or chunk.index in writes or chunk.index in deletes:
            continue
        if not chunk.nested:
            deletes.add(chunk.index)
            continue
        rest = live_entries(hub, state, chunk.index, live)
        if rest:
            writes[chunk.index] = {"version": INDEX_VERSION, "chunks": dict(sorted(rest.items()))}
        else:
            deletes.add(chunk.index)
    return [(p, index_bytes(v)) for p, v in sorted(writes.items())], sorted(deletes - set(writes))


def index_bytes(index: dict) -> bytes:
    return (json.dumps(index, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def live_entries(hub: HubClient, state: RepoState, index_file: str, live) -> dict[str, dict]:
    """label → entry of a batch index, for the chunks it lists that are in the repo and not deleted."""
    index = hub.read_json(state, index_file) or {}
    folder = index_file.rsplit("/", 1)[0]
    out = {}
    for label, entry in (index.get("chunks") or {}).items():
        payload = str(entry.get("file", ""))
        if payload.startswith(folder + "/") and payload in state.files and live(payload):
            out[label] = entry
    return out


def _operations(config: PublishConfig, changed: list[PackedChunk], indexes: list[tuple[str, bytes]], payload: list,
                stale: list[str], state: RepoState, attribution: str | None, grids: dict,
                provenance: dict | None = None) -> list:
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
    chunking = dict((state.manifest or {}).get("chunking", {}))
    chunking.update(grids)
    # This run's layers say what produced the images it published; other layers keep what the repo said.
    produced = {**manifest_provenance(state.manifest), **(provenance or {})}
    manifest = build_manifest(info, chunking=chunking, provenance=produced)
    card = build_card(config.hub_repo, manifest, config.license, attribution)
    operations = list(payload)
    operations += [CommitOperationAdd(path, data) for path, data in indexes]
    operations += [CommitOperationDelete(path) for path in stale if path in state.files]
    operations.append(CommitOperationAdd(MANIFEST_PATH, dumps(manifest)))
    operations.append(CommitOperationAdd(CARD_PATH, card.encode()))
    if config.attribution_file:
        operations.append(CommitOperationAdd(ATTRIBUTION_PATH, attribution.encode()))
    return operations
