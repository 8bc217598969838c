"""HubStream: iterate a repo published by `stratum publish`, chunk by chunk, without downloading the whole repo.

The repo is read at one commit (the revision is resolved once), and every chunk file and the index that
lists its ids are found through `publish.layout.list_chunks` over the repo's file list (both the nested and
the flat layout), never by a path pattern of its own; a chunk the manifest lists but the repo lacks is an
error before anything is streamed. The data
parquet gives the order (positions), ids, sizes and captions; each array layer's WebDataset tars are walked
alongside it and joined by image id, the chunk index mapping escaped keys back to true ids. Files are
downloaded one at a time through huggingface_hub (endpoint, token and retries as `stratum publish` uses
them; the token is never printed), the next chunk of each layer in the background while the current one is
read. A tar is memory-mapped and then deleted, so its arrays are read-only views that cost no copy, and the
disk holds about one chunk per layer unless `cache_dir` asks to keep them.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import shutil
import tarfile
import tempfile
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from stratum_core.artifacts import Artifact
from stratum_core.buckets import Bucket
from stratum_core.data.arrays import SampleError, npy_from_buffer
from stratum_core.data.collate import collate
from stratum_core.data.local import CORRUPT_MODES, MISSING_MODES, check_mode, layer_artifacts
from stratum_core.errors import StratumError
from stratum_core.publish.config import RetryPolicy
from stratum_core.publish.hub import REPO_TYPE, HubClient
from stratum_core.publish.layout import DATA_DIR, MANIFEST_PATH, TEXT_LAYERS, ChunkFile, ChunkRange, index_entry, \
    list_chunks, parse_member_name, tar_artifacts, unescape_key

log = logging.getLogger("stratum.data")

DATA_COLUMNS = ("image_id", "width", "height", "aspect_bucket")


class HubStreamError(StratumError):
    """The repo cannot be streamed as published: a layer or a listed chunk file is missing, or files disagree."""


@dataclass
class _Member:
    """One image's members in a tar: artifact name → (offset of the npy file in the tar, its size)."""

    image_id: str
    key: str
    files: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class _TarChunk:
    path: str
    range: ChunkRange
    buffer: mmap.mmap | bytes
    members: deque[_Member]


class HubStream:
    """Samples of a published repo, in dataset order: the same dicts as `StratumDataset` gives.

    `layers`: publish layer names (each must be in the repo's manifest). `revision`: a branch, tag or commit
    (default main), resolved to one commit for the whole stream. `endpoint`/`token`: as for `stratum publish`
    (None: huggingface_hub's defaults, HF_ENDPOINT and the saved login). `missing`/`corrupt`: as for
    `StratumDataset`. `start`: the position to begin at (see `state_dict`). `cache_dir`: keep downloaded
    chunks there (huggingface_hub's cache layout, reused next epoch) instead of deleting each once read;
    `tmp_dir`: where chunks wait while they are read otherwise (default: the system temp dir).
    """

    def __init__(self, repo_id: str, layers: Sequence[str] | str = ("caption",), revision: str | None = None,
                 endpoint: str | None = None, token: str | None = None, missing: str = "skip",
                 corrupt: str = "error", start: int = 0, cache_dir: str | None = None,
                 tmp_dir: str | None = None, retry: RetryPolicy | None = None):
        self.layers, self.artifacts = layer_artifacts(layers)
        self.missing = check_mode("missing", missing, MISSING_MODES)
        self.corrupt = check_mode("corrupt", corrupt, CORRUPT_MODES)
        self.cache_dir, self.tmp_dir = cache_dir, tmp_dir
        self.position = int(start)  # the next position a sample is read from
        self.left_out: Counter = Counter()  # reason → samples passed over
        self._workdir: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future] = {}
        self._hub = HubClient(repo_id, token=token, endpoint=endpoint, retry=retry)
        self.repo_id = self._hub.repo_id
        self.revision = self._hub.call("repo_info", self._hub.api.dataset_info, self.repo_id,
                                        revision=revision or "main").sha
        self.manifest = json.loads(self._read_bytes(MANIFEST_PATH, "`stratum publish` writes it"))
        published = set(self.manifest.get("layers", {}))
        absent = [layer for layer in self.layers if layer not in published]
        if absent:
            raise HubStreamError(f"{self.repo_id}@{self.revision[:12]} has no layer {', '.join(absent)} "
                                 f"(its manifest lists {', '.join(sorted(published)) or 'none'})")
        self._tar_layers = [layer for layer in self.layers if layer not in TEXT_LAYERS]
        files = self._hub.call("list_repo_files", self._hub.api.list_repo_files, self.repo_id,
                                repo_type=REPO_TYPE, revision=self.revision)
        self._chunks = {layer: list_chunks(files, layer) for layer in (DATA_DIR, *self._tar_layers)}
        for layer, chunks in self._chunks.items():
            self._check_listed(layer, chunks)
        self._data_chunks = [(c.range, c.path) for c in self._chunks[DATA_DIR]]
        self._indexes: dict[str, dict] = {}  # loaded index files (a nested folder's one serves many chunks)
        self._skip: set[int] = set()  # positions done before a resume (set by load_state_dict)
        self._pending_batches: dict[str, list[tuple[int, dict]]] = {}
        self.close()  # nothing stays on disk between iterations

    @property
    def total_images(self) -> int:
        return int(self.manifest.get("total_images", 0))

    # ---- files -----------------------------------------------------------------------------
    def _fetch(self, path: str, where: dict) -> str | None:
        """Download one file of the pinned commit into `where` (`_where()`); its local path, or None when the
        repo lacks it. Runs in the background threads too."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        def download() -> str | None:
            try:
                return hf_hub_download(self.repo_id, path, repo_type=REPO_TYPE, revision=self.revision,
                                       endpoint=self._hub.api.endpoint, token=self._hub.api.token, **where)
            except EntryNotFoundError:
                return None

        return self._hub.call(f"download {path}", download)  # the publisher's retry policy

    def _where(self) -> dict:
        """Where downloads go: the kept cache, or this iteration's temp dir (made here, in the calling thread,
        so background downloads never race to create it)."""
        if self.cache_dir:
            return {"cache_dir": self.cache_dir}
        if self._workdir is None:
            self._workdir = tempfile.mkdtemp(prefix="stratum-hubstream-", dir=self.tmp_dir)
        return {"local_dir": self._workdir}

    def _ahead(self, path: str) -> None:
        """Start downloading `path` in the background (at most one chunk ahead per layer asks for this)."""
        if path not in self._futures:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(4, thread_name_prefix="stratum-hubstream")
            self._futures[path] = self._pool.submit(self._fetch, path, self._where())

    def _local(self, path: str, listed_as: str) -> str:
        """The downloaded file (waiting for its background download); a clear error when the repo lacks it."""
        future = self._futures.pop(path, None)
        local = future.result() if future is not None else self._fetch(path, self._where())
        if local is None:
            raise HubStreamError(f"{path} is missing from {self.repo_id}@{self.revision[:12]}, though "
                                 f"{listed_as}; run `stratum reconcile --hub-repo {self.repo_id}` or publish it again")
        return local

    def _done_with(self, local: str) -> None:
        """Delete a read file unless chunks are kept (an open mapping keeps its pages until released)."""
        if not self.cache_dir:
            os.unlink(local)

    def _read_bytes(self, path: str, listed_as: str) -> bytes:
        local = self._local(path, listed_as)
        with open(local, "rb") as f:
            data = f.read()
        self._done_with(local)
        return data

    def close(self) -> None:
        """Stop background downloads and delete what they fetched (a finished iteration does this too)."""
        if self._pool is not None:
            for future in self._futures.values():
                future.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
        self._futures.clear()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "HubStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- chunks ----------------------------------------------------------------------------
    def _data_rows(self, chunk: ChunkRange, path: str, columns: Sequence[str]) -> list[tuple]:
        import pyarrow.parquet as pq

        local = self._local(path, f"manifest.json lists data chunk {chunk.label}")
        try:
            table = pq.read_table(local, columns=list(columns))
        finally:
            self._done_with(local)
        if table.num_rows != len(chunk):
            raise HubStreamError(f"{path} has {table.num_rows} rows, its range {chunk.label} needs {len(chunk)}")
        return list(zip(*(table.column(c).to_pylist() for c in columns)))

    def _open_tar(self, chunk: ChunkFile) -> _TarChunk:
        index = self._index(chunk)
        local = self._local(chunk.path, f"the repo lists it as {chunk.layer} chunk {chunk.range.label}")
        with open(local, "rb") as f:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""
            members = _tar_members(f, chunk.path, index)
        self._done_with(local)
        return _TarChunk(chunk.path, chunk.range, buffer, members)

    def _check_listed(self, layer: str, chunks: list[ChunkFile]) -> None:
        """Refuse a repo whose manifest lists a chunk of `layer` that is not among its files."""
        entry = self.manifest.get(DATA_DIR, {}) if layer == DATA_DIR else self.manifest["layers"][layer]
        present = {c.range.label for c in chunks}
        for label in entry.get("chunks", {}):
            if label not in present:
                path = entry.get("paths", {}).get(label, f"{layer} chunk {label}")
                raise HubStreamError(f"{path} is missing from {self.repo_id}@{self.revision[:12]}, though "
                                     f"manifest.json lists {layer} chunk {label}; run `stratum reconcile "
                                     f"--hub-repo {self.repo_id}` or publish it again")

    def _index(self, chunk: ChunkFile) -> dict:
        """The chunk's index entry (true ids, escaped keys); {} when the repo keeps none for it (keys then
        unescape by the layout's reversible rule)."""
        if chunk.index is None:
            return {}
        if chunk.index not in self._indexes:
            if len(self._indexes) >= 8:
                self._indexes.clear()
            self._indexes[chunk.index] = json.loads(self._read_bytes(chunk.index, f"it indexes {chunk.path}"))
        return index_entry(self._indexes[chunk.index], chunk) or {}

    def _ahead_index(self, chunk: ChunkFile) -> None:
        if chunk.index is not None and chunk.index not in self._indexes:
            self._ahead(chunk.index)

    def _ids_between(self, first: int, stop: int) -> set[str]:
        """Ids at positions [first, stop): a resumed stream passes over those members of its first tars."""
        ids: set[str] = set()
        for chunk, path in self._data_chunks:
            if chunk.first < stop and chunk.last >= first:
                rows = self._data_rows(chunk, path, ("image_id",))
                ids.update(row[0] for p, row in enumerate(rows, chunk.first) if first <= p < stop)
        return ids

    # ---- samples ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        for _, sample in self._samples():
            yield sample
        self._end_epoch()

    def _end_epoch(self) -> None:
        self.position = 0  # the next iteration is the next epoch
        self._skip.clear()

    def _samples(self) -> Iterator[tuple[int, dict]]:
        """(position, sample) from `self.position` on, advancing it past every sample read or left out."""
        start = self.position
        cursors = {layer: _LayerCursor(self, layer, start) for layer in self._tar_layers}
        columns = DATA_COLUMNS + (("caption",) if "caption" in self.layers else ())
        data = [(c, p) for c, p in self._data_chunks if c.last >= start]
        for cursor in cursors.values():
            cursor.prefetch()
        try:
            for k, (chunk, path) in enumerate(data):
                if k + 1 < len(data):
                    self._ahead(data[k + 1][1])
                rows = self._data_rows(chunk, path, columns)
                for position, row in enumerate(rows, chunk.first):
                    if position < start:
                        continue
                    sample = self._join(position, row, cursors)
                    self.position = position + 1
                    if sample is not None and position not in self._skip:
                        yield position, sample
            for cursor in cursors.values():
                cursor.finish()
        finally:
            self.close()

    def _join(self, position: int, row: tuple, cursors: dict[str, "_LayerCursor"]) -> dict | None:
        image_id, width, height, label = row[:4]
        try:
            bucket = Bucket.parse(str(label))
        except ValueError:
            raise HubStreamError(f"data row {position} ({image_id}) has aspect_bucket {label!r}") from None
        sample: dict = {"image_id": image_id, "bucket": bucket.label, "width": int(width), "height": int(height)}
        lacking = []
        if "caption" in self.layers:
            sample["caption"] = row[4]
            if row[4] is None:
                lacking.append("caption")
        try:
            for layer, cursor in cursors.items():
                arrays = cursor.take(position, image_id, bucket)
                if arrays is None:
                    lacking.append(layer)
                    arrays = dict.fromkeys((a.name for a in tar_artifacts(layer)))
                sample.update(arrays)
        except SampleError as exc:
            if self.corrupt == "error":
                raise
            log.warning("skipping a sample: %s", exc)
            self.left_out["corrupt"] += 1
            return None
        if lacking and self.missing != "none":
            if self.missing == "error":
                raise HubStreamError(f"{image_id} (position {position}) has no {', '.join(lacking)} in "
                                     f"{self.repo_id}; use missing='skip' or missing='none'")
            self.left_out[f"missing {lacking[0]}"] += 1
            return None
        return {k: sample[k] for k in ("image_id", "bucket", "width", "height")} | \
            {a.name: sample[a.name] for a in self.artifacts}

    # ---- batches and resume ----------------------------------------------------------------
    def batches(self, batch_size: int, drop_last: bool = False, max_wait: int | None = None,
                tensors: bool | None = None) -> Iterator[dict]:
        """`collate`d batches of consecutive samples of one bucket.

        Each bucket waits in its own buffer (at most batch_size - 1 samples); one whose oldest sample is
        `max_wait` positions behind (default 16 batches) goes out as a short batch, so a rare bucket is
        neither held nor buffered without bound. At the end partial batches go out unless `drop_last`.
        """
        if batch_size < 1:
            raise StratumError(f"batch_size must be >= 1, got {batch_size}")
        max_wait = 16 * batch_size if max_wait is None else max_wait
        pending = self._pending_batches
        for position, sample in self._samples():
            group = pending.setdefault(sample["bucket"], [])
            group.append((position, sample))
            if len(group) == batch_size:
                yield self._emit(sample["bucket"], tensors)
            for label in [b for b, g in pending.items() if g and position - g[0][0] >= max_wait]:
                yield self._emit(label, tensors)
        for label in sorted(pending):
            if pending[label] and not drop_last:
                yield self._emit(label, tensors)
        pending.clear()
        self._end_epoch()

    def _emit(self, label: str, tensors: bool | None) -> dict:
        group = self._pending_batches.pop(label)
        return collate([s for _, s in group], tensors=tensors)

    def state_dict(self) -> dict:
        """Where to resume: the first position not handed out, and the later ones already done (handed out in
        a batch, or left out); samples waiting in a bucket's buffer are read again on resume."""
        waiting = {p for group in self._pending_batches.values() for p, _ in group}
        resume = min(waiting, default=self.position)
        done = {p for p in range(resume, self.position) if p not in waiting} | {p for p in self._skip if p >= resume}
        return {"repo_id": self.repo_id, "revision": self.revision, "position": resume, "done": sorted(done)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` on the next iteration (published positions never move, so a newer
        revision of the same repo continues correctly too)."""
        if state.get("repo_id") != self.repo_id:
            raise StratumError(f"the state is of {state.get('repo_id')!r}, not {self.repo_id!r}")
        self.position = int(state["position"])
        self._skip = set(state.get("done", ()))
        self._pending_batches = {}


class _LayerCursor:
    """Walks one array layer's tars alongside the data rows: each tar is opened when a row in its range is
    read (the next one starts downloading then) and dropped once the rows pass its range."""

    def __init__(self, stream: HubStream, layer: str, start: int):
        self.stream, self.layer, self.start = stream, layer, start
        self.todo = deque(c for c in stream._chunks[layer] if c.range.last >= start)
        self.current: _TarChunk | None = None
        self.artifacts: dict[str, Artifact] = {a.name: a for a in tar_artifacts(layer)}

    def take(self, position: int, image_id: str, bucket: Bucket) -> dict | None:
        """The arrays of `image_id` (at `position`), or None when this layer does not have it."""
        chunk = self._chunk_for(position)
        if chunk is None or not chunk.members or chunk.members[0].image_id != image_id:
            return None
        member = chunk.members.popleft()
        missing = set(self.artifacts) - set(member.files)
        if missing:
            raise HubStreamError(f"{chunk.path} holds no {', '.join(sorted(missing))} for {image_id}")
        return {name: npy_from_buffer(chunk.buffer, *member.files[name], artifact, bucket,
                                      f"{chunk.path}:{member.key}.{name}.npy")
                for name, artifact in self.artifacts.items()}

    def _chunk_for(self, position: int) -> _TarChunk | None:
        if self.current is not None and self.current.range.last < position:
            self.finish()
        if self.current is None:
            while self.todo and self.todo[0].range.last < position:
                self.todo.popleft()
            if not self.todo or self.todo[0].range.first > position:
                return None
            chunk = self.todo.popleft()
            self.prefetch()
            self.current = self.stream._open_tar(chunk)
            if chunk.range.first < self.start:  # resumed inside this tar: pass over the images before the start
                before = self.stream._ids_between(chunk.range.first, self.start)
                while self.current.members and self.current.members[0].image_id in before:
                    self.current.members.popleft()
        return self.current

    def prefetch(self) -> None:
        """Start downloading the next tar of this layer (and its index)."""
        if self.todo:
            self.stream._ahead_index(self.todo[0])
            self.stream._ahead(self.todo[0].path)

    def finish(self) -> None:
        """Leave the current tar; members the data rows never reached mean the two disagree."""
        if self.current is not None and self.current.members:
            raise HubStreamError(f"{self.current.path} holds {self.current.members[0].image_id!r}, which the data "
                                 f"table does not list (in this order) at positions {self.current.range.label}")
        self.current = None


def _tar_members(f, path: str, index: dict) -> deque[_Member]:
    """The tar's images in member order, with true ids from the chunk index (keys unescaped without one)."""
    escaped = index.get("escaped_keys") or {}
    members: deque[_Member] = deque()
    try:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                parsed = parse_member_name(info.name)
                if parsed is None:
                    raise HubStreamError(f"{path}: member {info.name!r} is not <key>.<artifact>.npy")
                key, artifact = parsed
                if not members or members[-1].key != key:
                    members.append(_Member(escaped.get(key, unescape_key(key)), key))
                members[-1].files[artifact] = (info.offset_data, info.size)
    except tarfile.TarError as exc:
        raise HubStreamError(f"{path}: not a readable tar: {exc}") from None
    ids = index.get("ids")
    if ids is not None and ids != [m.image_id for m in members]:
        raise HubStreamError(f"{path}: its members do not match the ids its index lists")
    return members
