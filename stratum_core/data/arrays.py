"""One artifact array, read and checked against the artifact table: never a silently wrong array.

A local npy file is memory-mapped when it is large (`MMAP_MIN_BYTES`), so a sample costs no copy until it
is used; a tar member becomes a read-only view of the buffer that holds the tar. Either way the header's
dtype and shape must be the ones the artifact table gives for the image's bucket, and the data must be
complete, or the read fails with a `SampleError` that names the file.
"""

from __future__ import annotations

import io
import math

import numpy as np

from stratum_core.artifacts import Artifact
from stratum_core.buckets import Bucket
from stratum_core.errors import StratumError

MMAP_MIN_BYTES = 1 << 16  # below this a plain read is cheaper than setting up a mapping
_HEADER_MAX = 4096  # npy headers of the table's arrays are ~128 bytes


class SampleError(StratumError):
    """One sample cannot be read (a missing, corrupt or mis-shaped file); the message names the file."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


def expected_shape(artifact: Artifact, bucket: Bucket) -> tuple[int, ...]:
    assert artifact.shape is not None, artifact.name
    return artifact.shape(bucket)


def load_npy(path: str, artifact: Artifact, bucket: Bucket) -> np.ndarray:
    """The array in `path` (memory-mapped when large), checked against `artifact` for `bucket`."""
    shape = expected_shape(artifact, bucket)
    large = math.prod(shape) * np.dtype(artifact.dtype).itemsize >= MMAP_MIN_BYTES
    try:
        array = np.load(path, mmap_mode="r" if large else None, allow_pickle=False)
    except FileNotFoundError:
        raise SampleError(f"{path}: file is gone (removed since the dataset was listed)", path) from None
    except (ValueError, OSError, EOFError) as exc:  # bad magic or header, truncated data, a pickle
        raise SampleError(f"{path}: not a readable npy file: {exc}", path) from None
    _check(array, artifact, shape, path)
    return array


def npy_from_buffer(buffer, offset: int, size: int, artifact: Artifact, bucket: Bucket, name: str) -> np.ndarray:
    """A read-only view of the npy file stored at buffer[offset:offset+size] (a tar member, say)."""
    shape = expected_shape(artifact, bucket)
    head = io.BytesIO(bytes(memoryview(buffer)[offset:offset + min(size, _HEADER_MAX)]))
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(head)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(head)
        else:
            raise ValueError(f"npy version {version} is not supported")
    except (ValueError, EOFError) as exc:
        raise SampleError(f"{name}: not a readable npy file: {exc}", name) from None
    stored_shape, fortran, dtype = header
    if dtype.hasobject:
        raise SampleError(f"{name}: holds Python objects, not an array", name)
    data_offset = head.tell()
    count = math.prod(stored_shape)
    if size - data_offset != count * dtype.itemsize:
        raise SampleError(f"{name}: {size - data_offset} data bytes, the header needs {count * dtype.itemsize}"
                          " (truncated or damaged)", name)
    array = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset + data_offset)
    array = array.reshape(stored_shape, order="F" if fortran else "C")
    _check(array, artifact, shape, name)
    return array


def _check(array, artifact: Artifact, shape: tuple[int, ...], name: str) -> None:
    if not isinstance(array, np.ndarray):
        raise SampleError(f"{name}: not a single npy array", name)
    if str(array.dtype) != artifact.dtype:
        raise SampleError(f"{name}: dtype {array.dtype}, the artifact table says {artifact.dtype}", name)
    if array.shape != shape:
        raise SampleError(f"{name}: shape {array.shape}, the artifact table says {shape} for this bucket", name)
