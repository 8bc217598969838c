"""Host side of a pass's device copies: pinned buffers that are reused, so the GPU lane never page-faults.

A fresh `tensor.cpu()` per batch costs the lane thread a pageable allocation and its first-touch
page faults (~256 MiB for 32 DINOv3 images), and CUDA copies pageable memory through a bounce
buffer. Here outputs land in page-locked buffers from torch's caching host allocator: a buffer goes
back to its cache once every array handed out from it is gone (the writers hold those until their
files are written) and the next batch of that size reuses it; an upload's buffer is not reused
before the upload is done (the allocator records it). On the CPU nothing is copied at all.

torch is imported inside functions: importing a pass module never imports torch.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class HostBuffers:
    """Device ↔ host staging for a pass on `device` (page-locked when it is a CUDA device)."""

    def __init__(self, device: str):
        self.device = device
        self.pin = device.startswith("cuda")

    def to_numpy(self, *tensors: Any) -> tuple[np.ndarray, ...]:
        """Host arrays of `tensors`: views for CPU tensors (no copy), else copies into host buffers."""
        if all(t.device.type == "cpu" for t in tensors):
            return tuple(t.numpy() for t in tensors)
        return self.copy(*tensors)

    def copy(self, *tensors: Any) -> tuple[np.ndarray, ...]:
        """Each tensor copied into a new host buffer (pinned and non-blocking on CUDA), one wait for all."""
        import torch

        arrays = []
        for tensor in tensors:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=self.pin)
            buffer.copy_(tensor, non_blocking=self.pin)
            arrays.append(buffer.numpy())  # holds the buffer until the last view of it is gone
        for device in {t.device for t in tensors if t.device.type == "cuda"}:
            torch.cuda.current_stream(device).synchronize()  # the host must not read before they land
        return tuple(arrays)

    def stack(self, arrays: Sequence[Any]) -> Any:
        """The arrays stacked into one host tensor (pinned on CUDA, ready for a non-blocking upload):
        the one copy the batch's input needs."""
        import torch

        first = np.asarray(arrays[0])
        dtype = torch.from_numpy(np.empty(0, first.dtype)).dtype
        buffer = torch.empty((len(arrays), *first.shape), dtype=dtype, pin_memory=self.pin)
        np.stack([np.asarray(a) for a in arrays], out=buffer.numpy())
        return buffer
