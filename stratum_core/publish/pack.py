"""Pack chunks: the data parquet (pyarrow) and uncompressed, byte-deterministic WebDataset tars.

Both writers are deterministic (fixed member order, mtime 0, owner 0), so packing the same images
twice gives the same bytes and republishing a range is recognised as a no-op by content hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from stratum_core.artifacts import BY_NAME
from stratum_core.publish.layout import escape_key, member_name, tar_artifacts

BLOCK = 512
RECORD = 20 * BLOCK  # tar archives are padded to whole records
CLS_DIM = 1024
POSE_SHAPE = (133, 3)


@dataclass
class PackedChunk:
    """One payload file on local disk plus its index (true ids, counts)."""

    layer: str  # "data" or an array layer name
    path_in_repo: str
    local_path: Path
    index: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.local_path.stat().st_size

    def sha256(self) -> str:
        return file_sha256(self.local_path)

    def index_bytes(self) -> bytes:
        return (json.dumps(self.index, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


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


def pack_data(root: Path, image_ids: Sequence[str], layers: Sequence[str], out: Path,
              path_in_repo: str) -> PackedChunk:
    """Write the data parquet for `image_ids`; columns of layers not in `layers` stay null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = data_schema()
    meta = [json.loads((root / i / "metadata.json").read_text(encoding="utf-8")) for i in image_ids]
    captions = [_read_text(root / i / BY_NAME["caption"].filename) if "caption" in layers else None
                for i in image_ids]
    poses = [_read_npy(root / i / BY_NAME["pose"].filename, POSE_SHAPE) if "pose" in layers else None
             for i in image_ids]
    cls = [_read_npy(root / i / BY_NAME["dinov3_cls"].filename, (CLS_DIM,)) if "dinov3" in layers else None
           for i in image_ids]
    table = pa.table({
        "image_id": pa.array(list(image_ids), pa.string()),
        "width": pa.array([int(m["width"]) for m in meta], pa.int32()),
        "height": pa.array([int(m["height"]) for m in meta], pa.int32()),
        "aspect_bucket": pa.array([str(m["aspect_bucket"]) for m in meta], pa.string()),
        "caption": pa.array(captions, pa.string()),
        "pose": _fixed_list(poses, POSE_SHAPE, schema.field("pose").type),
        "dinov3_cls": _fixed_list(cls, (CLS_DIM,), schema.field("dinov3_cls").type),
    }, schema=schema)
    pq.write_table(table, out, compression="zstd")
    counts = {"caption": sum(c is not None for c in captions), "pose": sum(p is not None for p in poses),
              "dinov3": sum(c is not None for c in cls)}
    index = {"version": 1, "file": path_in_repo, "count": len(image_ids), "ids": list(image_ids),
             "layers": sorted(layer for layer in layers if counts.get(layer)),
             "counts": {k: v for k, v in counts.items() if k in layers}}
    return PackedChunk("data", path_in_repo, out, index)


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


def pack_tar(root: Path, layer: str, image_ids: Sequence[str], out: Path, path_in_repo: str) -> PackedChunk:
    """Write `<key>.<artifact>.npy` members for each image, in id order, straight from the npy files."""
    artifacts = tar_artifacts(layer)
    written = 0
    with open(out, "wb", buffering=0) as f:
        for image_id in image_ids:
            for artifact in artifacts:
                with open(root / image_id / artifact.filename, "rb", buffering=0) as src:
                    size = os.fstat(src.fileno()).st_size
                    header = _header(member_name(image_id, artifact), size)
                    f.write(header)
                    _copy(src.fileno(), f.fileno(), size)
                pad = -size % BLOCK
                f.write(b"\0" * pad + b"")
                written += len(header) + size + pad
        end = 2 * BLOCK
        f.write(b"\0" * (end + (-(written + end) % RECORD)))
    keys = {escape_key(i): i for i in image_ids}
    index = {"version": 1, "file": path_in_repo, "count": len(image_ids), "ids": list(image_ids),
             "artifacts": [a.name for a in artifacts],
             "escaped_keys": {k: v for k, v in keys.items() if k != v}}
    return PackedChunk(layer, path_in_repo, out, index)


def _copy(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy `size` bytes in the kernel (copy_file_range / sendfile), never through Python buffers."""
    left = size
    while left > 0:
        try:
            sent = os.copy_file_range(src_fd, dst_fd, left)
        except (AttributeError, OSError):
            sent = os.sendfile(dst_fd, src_fd, None, left)
        if sent == 0:
            raise OSError("file shrank while packing")
        left -= sent


def tar_member_bytes(root: Path, layer: str, image_id: str) -> int:
    """Bytes an image adds to a tar (data plus about one header block per member)."""
    total = 0
    for artifact in tar_artifacts(layer):
        total += os.stat(root / image_id / artifact.filename).st_size + 2 * BLOCK
    return total
