"""Pack chunks: the data parquet (pyarrow) and uncompressed, byte-deterministic WebDataset tars.

Both writers are deterministic (fixed member order, mtime 0, owner 0), so packing the same images
twice gives the same bytes and republishing a range is recognised as a no-op by content hash.

A packed chunk lives in a `Payload`: an anonymous in-memory file (Linux memfd) that huggingface_hub
reads through its /proc/self/fd path, so the npy bytes are copied once, in the kernel, and never
written back to disk. Elsewhere (or without /proc) it is an unlinked-on-close temporary file.
A `PayloadPool` (one per publish) lets the next chunk reuse a freed chunk's memfd: overwriting pages the
memfd already has runs about 2.5x faster than faulting in and zeroing fresh shared-memory pages.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from stratum_core.artifacts import BY_NAME, DINOV3_WIDTH, POSE_KEYPOINTS
from stratum_core.publish.layout import escape_key, member_name, tar_artifacts

BLOCK = 512
RECORD = 20 * BLOCK  # tar archives are padded to whole records
CLS_DIM = DINOV3_WIDTH
POSE_SHAPE = (POSE_KEYPOINTS, 3)
PREFETCH_FILES = 2  # npy files whose reads are started ahead of the one being copied
ROW_READERS = 8  # threads reading a parquet's small per-image files


class Payload:
    """The bytes of one chunk file: written once, then read by path (hashing, upload) until closed.

    With a `pool`, the memfd may be one a freed payload used (rewound to 0, stale bytes behind);
    `finish()` cuts it to what was written. Close hands it back to the pool instead of freeing it.
    """

    def __init__(self, name: str, spill_dir: Path | None = None, pool: PayloadPool | None = None):
        name = "stratum-" + name.replace("/", "_")  # shows in /proc/<pid>/fd as /memfd:stratum-...
        self._spilled: str | None = None
        self._pool = pool
        self.fd = pool.lend() if pool is not None else _memfd(name)
        if self.fd is None:
            self._pool = None  # no memfd here: a spill file, removed on close as without a pool
            self.fd, self._spilled = tempfile.mkstemp(suffix="-" + name, dir=spill_dir)
        self.path = self._spilled or f"/proc/self/fd/{self.fd}"
        self.size = 0

    def write(self, data: bytes) -> None:
        _write_all(self.fd, data)
        self.size += len(data)

    def copy_from(self, src_fd: int, size: int) -> None:
        """Append `size` bytes of `src_fd` (copied in the kernel where it can be)."""
        _copy(src_fd, self.fd, size)
        self.size += size

    def finish(self) -> None:
        """End the file at the bytes written: a reused memfd's stale tail goes (and its pages with it), so
        reading by path (sha256, upload, the size huggingface_hub takes from stat) sees this chunk only."""
        os.ftruncate(self.fd, self.size)

    def sha256(self) -> str:
        return file_sha256(Path(self.path))

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        """Free the bytes (the memfd's pages go when its last descriptor closes), or give a pooled memfd
        back to its pool, which keeps its pages for the next chunk."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            if self._pool is not None:
                self._pool.give_back(fd)
            else:
                os.close(fd)
        if self._spilled:
            Path(self._spilled).unlink(missing_ok=True)


class PayloadPool:
    """Memfds for one publish's payloads, reusing the pages of a freed payload for the next one.

    Holds at most one idle memfd (the last freed payload's pages, at most one chunk's worth): a payload
    still open (being uploaded, or a regular file kept until its commit) is never lent again, since only
    `Payload.close()` gives one back. `close()` frees the idle one; call it when the publish ends.
    """

    NAME = "stratum-pool"  # shows in /proc/<pid>/fd as /memfd:stratum-pool, whichever chunk it holds

    def __init__(self, spill_dir: Path | None = None):
        self.spill_dir = spill_dir  # where payloads go without memfd
        self.lent = 0  # payloads taken and not given back yet
        self._idle: int | None = None
        self._closed = False

    def lend(self) -> int | None:
        """The idle memfd rewound to 0, else a new one; None without memfd (the caller spills)."""
        fd, self._idle = self._idle, None
        if fd is None:
            fd = _memfd(self.NAME)
            if fd is None:
                return None
        else:
            os.lseek(fd, 0, os.SEEK_SET)
        self.lent += 1
        return fd

    def give_back(self, fd: int) -> None:
        """Keep `fd` (no longer read by anyone) as the idle memfd, or close it when one is kept already."""
        self.lent -= 1
        if self._idle is None and not self._closed:
            self._idle = fd
        else:
            os.close(fd)

    @property
    def idle(self) -> int:
        return 0 if self._idle is None else 1

    def close(self) -> None:
        """Free the idle memfd; payloads given back later are closed at once."""
        self._closed = True
        if self._idle is not None:
            os.close(self._idle)
            self._idle = None

    def __enter__(self) -> "PayloadPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _memfd(name: str) -> int | None:
    if not hasattr(os, "memfd_create"):
        return None
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    if os.path.exists(f"/proc/self/fd/{fd}"):
        return fd
    os.close(fd)  # no /proc: huggingface_hub could not open it by path
    return None


@dataclass
class PackedChunk:
    """One payload file (in memory) plus its index (true ids, counts); close() frees the payload."""

    layer: str  # "data" or an array layer name
    path_in_repo: str
    payload: Payload
    index: dict = field(default_factory=dict)
    size: int = 0

    def sha256(self) -> str:
        return self.payload.sha256()

    def index_bytes(self) -> bytes:
        return (json.dumps(self.index, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()

    def close(self) -> None:
        self.payload.close()

    def __enter__(self) -> "PackedChunk":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def data_schema():
    """The fixed parquet schema: every file has every column, so all chunks load as one table."""
    import pyarrow as pa

    half = pa.float16()
    return pa.schema([
        ("image_id", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
        ("aspect_bucket", pa.string()), ("caption", pa.string()),
        ("pose", pa.list_(pa.list_(half, POSE_SHAPE[1]), POSE_SHAPE[0])),
        ("dinov3_cls", pa.list_(half, CLS_DIM)),
    ])


def _read_npy(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    return array.astype(np.float16).reshape(shape)


def _fixed_list(arrays: list[np.ndarray | None], shape: tuple[int, ...], schema_type):
    """Build a (nullable) fixed-size-list column from float16 arrays without Python-level loops."""
    import pyarrow as pa

    flat = np.zeros((len(arrays), int(np.prod(shape))), dtype=np.float16)
    valid = np.zeros(len(arrays), dtype=bool)
    for i, array in enumerate(arrays):
        if array is not None:
            flat[i] = array.reshape(-1)
            valid[i] = True
    values = pa.array(flat.reshape(-1), type=pa.float16())
    for size in reversed(shape[1:]):
        values = pa.FixedSizeListArray.from_arrays(values, size)
    mask = pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(values, type=schema_type, mask=mask)


def pack_data(root: Path, image_ids: Sequence[str], layers: Sequence[str], path_in_repo: str,
              spill_dir: Path | None = None, pool: PayloadPool | None = None) -> PackedChunk:
    """Write the data parquet for `image_ids`; columns of layers not in `layers` stay null.

    `pool`: take the payload from it (spill files then go to the pool's spill_dir); None: a fresh one.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = data_schema()
    rows = _read_rows(root, image_ids, layers)
    meta, captions, poses, cls = (list(column) for column in zip(*rows)) if rows else ([], [], [], [])
    table = pa.table({
        "image_id": pa.array(list(image_ids), pa.string()),
        "width": pa.array([int(m["width"]) for m in meta], pa.int32()),
        "height": pa.array([int(m["height"]) for m in meta], pa.int32()),
        "aspect_bucket": pa.array([str(m["aspect_bucket"]) for m in meta], pa.string()),
        "caption": pa.array(captions, pa.string()),
        "pose": _fixed_list(poses, POSE_SHAPE, schema.field("pose").type),
        "dinov3_cls": _fixed_list(cls, (CLS_DIM,), schema.field("dinov3_cls").type),
    }, schema=schema)
    payload = Payload(path_in_repo, pool.spill_dir if pool else spill_dir, pool)
    try:
        with open(payload.fd, "wb", closefd=False) as sink:
            pq.write_table(table, sink, compression="zstd")
        payload.size = os.lseek(payload.fd, 0, os.SEEK_CUR)  # the end of what was written, not of the file
        payload.finish()
    except BaseException:
        payload.close()
        raise
    counts = {"caption": sum(c is not None for c in captions), "pose": sum(p is not None for p in poses),
              "dinov3": sum(c is not None for c in cls)}
    index = {"version": 1, "file": path_in_repo, "count": len(image_ids), "ids": list(image_ids),
             "layers": sorted(layer for layer in layers if counts.get(layer)),
             "counts": {k: v for k, v in counts.items() if k in layers}}
    return PackedChunk("data", path_in_repo, payload, index, payload.size)


def _read_rows(root: Path, image_ids: Sequence[str], layers: Sequence[str]) -> list[tuple]:
    """(metadata, caption, pose, cls) of each image, in order. Read by a few threads: these are small files,
    often cold, and a thread waiting on the disk lets the others read."""
    base = os.fspath(root)
    want_caption, want_pose, want_cls = "caption" in layers, "pose" in layers, "dinov3" in layers

    def row(image_id: str) -> tuple:
        folder = os.path.join(base, image_id)
        with open(os.path.join(folder, BY_NAME["metadata"].filename), encoding="utf-8") as f:
            meta = json.load(f)
        return (meta,
                _read_text(Path(folder, BY_NAME["caption"].filename)) if want_caption else None,
                _read_npy(Path(folder, BY_NAME["pose"].filename), POSE_SHAPE) if want_pose else None,
                _read_npy(Path(folder, BY_NAME["dinov3_cls"].filename), (CLS_DIM,)) if want_cls else None)

    if len(image_ids) < 64:
        return [row(i) for i in image_ids]
    with ThreadPoolExecutor(ROW_READERS, thread_name_prefix="stratum-parquet") as readers:
        return list(readers.map(row, image_ids, chunksize=32))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o644, 0, 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def pack_tar(root: Path, layer: str, image_ids: Sequence[str], path_in_repo: str,
             spill_dir: Path | None = None, pool: PayloadPool | None = None) -> PackedChunk:
    """Write `<key>.<artifact>.npy` members for each image, in id order, straight from the npy files.

    `pool`: take the payload from it (spill files then go to the pool's spill_dir); None: a fresh one.
    """
    artifacts = tar_artifacts(layer)
    sources = [(member_name(i, a), root / i / a.filename) for i in image_ids for a in artifacts]
    payload = Payload(path_in_repo, pool.spill_dir if pool else spill_dir, pool)
    try:
        _write_members(payload, sources)
        payload.finish()
    except BaseException:
        payload.close()
        raise
    keys = {escape_key(i): i for i in image_ids}
    index = {"version": 1, "file": path_in_repo, "count": len(image_ids), "ids": list(image_ids),
             "artifacts": [a.name for a in artifacts],
             "escaped_keys": {k: v for k, v in keys.items() if k != v}}
    return PackedChunk(layer, path_in_repo, payload, index, payload.size)


def _write_members(payload: Payload, sources: list[tuple[str, Path]]) -> None:
    """Header, data and padding of each member, then the end-of-archive blocks and record padding."""
    fds: list[int] = []  # open sources, the first one being copied, the others prefetching
    try:
        for position, (name, _) in enumerate(sources):
            while len(fds) <= PREFETCH_FILES and position + len(fds) < len(sources):
                fds.append(_open_prefetching(sources[position + len(fds)][1]))
            src = fds.pop(0)
            try:
                size = os.fstat(src).st_size
                payload.write(_header(name, size))
                payload.copy_from(src, size)
                payload.write(bytes(-size % BLOCK))
            finally:
                os.close(src)
    finally:
        for fd in fds:
            os.close(fd)
    end = 2 * BLOCK
    payload.write(bytes(end + (-(payload.size + end) % RECORD)))


def _open_prefetching(path: Path) -> int:
    """Open a source and ask the kernel to start reading it, so disk reads overlap the current copy."""
    fd = os.open(path, os.O_RDONLY)
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    return fd


def _copy(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy `size` bytes from the current offset of `src_fd`, in the kernel (sendfile) where it can be."""
    left = size
    while left > 0:
        try:
            sent = os.sendfile(dst_fd, src_fd, None, left)
        except OSError:  # no file-to-file sendfile here: copy through a buffer
            block = os.read(src_fd, min(left, 1 << 24))
            _write_all(dst_fd, block)
            sent = len(block)
        if sent == 0:
            raise OSError("file shrank while packing")
        left -= sent


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def tar_member_bytes(root: Path, layer: str, image_id: str) -> int:
    """Bytes an image adds to a tar (data plus about one header block per member)."""
    total = 0
    for artifact in tar_artifacts(layer):
        total += os.stat(root / image_id / artifact.filename).st_size + 2 * BLOCK
    return total
