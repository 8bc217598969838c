"""collate: a list of sample dicts → one batch dict (stacked arrays; strings and ids as lists).

Arrays become torch tensors when torch is installed (numpy arrays otherwise, or with `tensors=False`);
torch is imported here only, on the first call. In a DataLoader worker the batch is stacked straight into
shared memory, as torch's own collate does, so it crosses to the main process without another copy.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import mmap
from typing import Sequence

import numpy as np

log = logging.getLogger("stratum.data")


@functools.cache
def torch_available() -> bool:
    """Is torch installed (without importing it)?"""
    return importlib.util.find_spec("torch") is not None


def collate(samples: Sequence[dict | None], tensors: bool | None = None) -> dict:
    """Stack each array key over the samples (all must share a bucket; see BucketBatchSampler).

    None samples (unreadable under corrupt="skip") are dropped. A key that is None in some sample
    (missing="none") stays a list. `width`/`height` become integer arrays; other values stay lists.
    `tensors`: None = torch tensors when torch is installed; True/False to choose.
    """
    kept = [s for s in samples if s is not None]
    if len(kept) < len(samples):
        log.warning("collate: %d unreadable sample(s) dropped from the batch", len(samples) - len(kept))
    if not kept:
        return {}
    use_torch = torch_available() if tensors is None else tensors
    batch: dict = {}
    for key in kept[0]:
        values = [s[key] for s in kept]
        if all(isinstance(v, np.ndarray) for v in values):
            shapes = {v.shape for v in values}
            if len(shapes) > 1:
                raise ValueError(f"collate: {key} arrays of different shapes {sorted(shapes)} (buckets "
                                 f"{sorted({s['bucket'] for s in kept})}); batch with BucketBatchSampler")
            batch[key] = _stack_torch(values) if use_torch else stack(values)
        elif key in ("width", "height"):
            array = np.asarray(values, dtype=np.int64)
            batch[key] = _as_tensor(array) if use_torch else array
        else:
            batch[key] = values
    return batch


def _stack_torch(arrays: list[np.ndarray]):
    import torch

    shape = (len(arrays),) + arrays[0].shape
    dtype = torch.from_numpy(np.empty(0, dtype=arrays[0].dtype)).dtype
    if torch.utils.data.get_worker_info() is not None:
        # As default_collate does: the storage is shared memory, so sending the batch copies nothing.
        storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(int(np.prod(shape)), device="cpu")
        out = torch.empty(0, dtype=dtype).new(storage).resize_(shape)
    else:
        out = torch.empty(shape, dtype=dtype)
    stack(arrays, out=out.numpy())
    return out


def stack(arrays: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """np.stack, except that a whole memory-mapped npy file is read straight into its row of the batch: one
    copy in the kernel, where copying from the mapping would fault its pages in one by one (~2x slower)."""
    if out is None:
        out = np.empty((len(arrays),) + arrays[0].shape, dtype=arrays[0].dtype)
    for row, array in zip(out, arrays):
        if _whole_file_map(array) and row.flags.c_contiguous:
            _read_into(row, array)
        else:
            row[...] = array
    return out


def _whole_file_map(array: np.ndarray) -> bool:
    """A memmap of a whole npy file's data (as np.load(mmap_mode="r") gives), not a view into one."""
    return isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.flags.c_contiguous \
        and bool(array.filename)


def _read_into(row: np.ndarray, array: np.memmap) -> None:
    from stratum_core.data.arrays import SampleError

    view = memoryview(row).cast("B")
    with open(array.filename, "rb", buffering=0) as f:
        f.seek(array.offset)
        done = 0
        while done < len(view):
            n = f.readinto(view[done:])
            if not n:
                raise SampleError(f"{array.filename}: the file shrank while it was read", array.filename)
            done += n


def _as_tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(array)
