"""collate: a list of sample dicts → one batch dict (stacked arrays; strings and ids as lists).

Arrays become torch tensors when torch is installed (numpy arrays otherwise, or with `tensors=False`);
torch is imported here only, on the first call. In a DataLoader worker the batch is stacked straight into
shared memory, as torch's own collate does, so it crosses to the main process without another copy.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
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
            batch[key] = _stack_torch(values) if use_torch else np.stack(values)
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
    np.stack(arrays, out=out.numpy())  # one copy, from the memory-mapped files into the batch
    return out


def _as_tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(array)
