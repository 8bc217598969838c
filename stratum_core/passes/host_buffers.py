"""Reused host buffers for device-to-host copies: the GPU lane never allocates (or page-faults) outputs.

A fresh `tensor.cpu()` per batch costs the lane thread a pageable allocation and its first-touch
page faults (~256 MiB for 32 DINOv3 images), and CUDA copies pageable memory through a bounce
buffer. Here each output shape has a few buffers (pinned on CUDA), reused once every array handed
out from one is gone; the writer thread holds those arrays until their files are written.

torch is imported inside functions: importing a pass module never imports torch.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

BUFFERS_PER_SHAPE = 8  # a batch being copied, a few queued for the writers, a few being written


class HostBuffers:
    """Host buffers for a pass on `device`, reused (and page-locked when it is a CUDA device)."""

    def __init__(self, device: str, per_shape: int = BUFFERS_PER_SHAPE):
        self.device = device
        self.pin = device.startswith("cuda")
        self.per_shape = per_shape
        # (shape, dtype) → [(array, the tensor sharing its memory)]
        self._pool: dict[tuple[tuple[int, ...], Any], list[tuple[np.ndarray, Any]]] = {}

    def to_numpy(self, *tensors: Any) -> tuple[np.ndarray, ...]:
        """Host arrays of `tensors`: views for CPU tensors (no copy), else copies into reused buffers."""
        if all(t.device.type == "cpu" for t in tensors):
            return tuple(t.numpy() for t in tensors)
        return self.copy(*tensors)

    def copy(self, *tensors: Any) -> tuple[np.ndarray, ...]:
        """Copy each tensor into a free buffer of its shape and dtype; one wait for all the copies."""
        import torch

        arrays = []
        for tensor in tensors:
            owner, buffer = self._free_buffer(tuple(tensor.shape), tensor.dtype)
            buffer.copy_(tensor, non_blocking=self.pin)
            arrays.append(owner[...])  # a view: while it (or any slice of it) lives, the buffer is busy
        devices = {t.device for t in tensors if t.device.type == "cuda"}
        for device in devices:  # non-blocking copies: the host must not read before they land
            torch.cuda.current_stream(device).synchronize()
        return tuple(arrays)

    def stack(self, arrays: Sequence[Any]) -> Any:
        """The arrays stacked into a reused (pinned) buffer, as a tensor for a non-blocking upload.

        Waits for the device first when pinned: an upload still reading the buffer from a batch
        that failed must not see it overwritten (after a normal batch the device is idle already).
        """
        import torch

        first = np.asarray(arrays[0])
        if self.pin:
            torch.cuda.synchronize(torch.device(self.device))
        owner, buffer = self._free_buffer((len(arrays), *first.shape), torch.from_numpy(np.empty(0, first.dtype)).dtype)
        np.stack([np.asarray(a) for a in arrays], out=owner)
        return buffer

    def buffers(self, shape: tuple[int, ...], dtype: Any) -> int:
        """How many buffers of this shape and dtype the pool holds."""
        return len(self._pool.get((shape, dtype), ()))

    def _free_buffer(self, shape: tuple[int, ...], dtype: Any) -> tuple[np.ndarray, Any]:
        import torch

        entries = self._pool.setdefault((shape, dtype), [])
        for owner, buffer in entries:
            # Referenced only by the pool and this loop: no array handed out from it is alive.
            if sys.getrefcount(owner) <= _IDLE_REFS:
                return owner, buffer
        buffer = torch.empty(shape, dtype=dtype, pin_memory=self.pin)
        entry = (buffer.numpy(), buffer)
        if len(entries) < self.per_shape:
            entries.append(entry)
        return entry


def _idle_refs() -> int:
    """sys.getrefcount of a pooled array nothing else holds, measured the way _free_buffer reads it."""
    entries = [(np.empty(1), None)]
    for owner, _buffer in entries:
        return sys.getrefcount(owner)
    raise AssertionError("unreachable")


_IDLE_REFS = _idle_refs()
