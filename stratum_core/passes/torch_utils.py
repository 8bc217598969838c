"""Small torch helpers shared by the torch passes: dtypes, automatic batch size, device moves.

torch is imported inside each function so that importing a pass module (which the CLI
does for every registered pass) never imports torch.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

from stratum_core.errors import ConfigError, InfrastructureError

log = logging.getLogger("stratum.torch")

_DTYPE_NAMES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_BYTES_PER_ELEMENT = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}

CPU_BATCH_SIZE = 2  # the CPU gains nothing from big batches and memory grows with them


def torch_dtype(precision: str) -> Any:
    """"fp32" | "bf16" | "fp16" → the torch dtype (`precision` must already be resolved, not "auto")."""
    import torch

    if precision not in _DTYPE_NAMES:
        raise ConfigError(f"precision must be one of {', '.join(_DTYPE_NAMES)}, got {precision!r}")
    return getattr(torch, _DTYPE_NAMES[precision])


@contextlib.contextmanager
def tf32_matmuls() -> Iterator[None]:
    """fp32 matmuls and convolutions on TF32 tensor cores (Ampere and newer) inside the block.

    torch's switches are process-wide, so they are set for the block and put back after it; the
    GPU lane runs one pass at a time, and a concurrent lane's bf16 work does not read them.
    """
    import torch

    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def bytes_per_element(precision: str) -> int:
    return _BYTES_PER_ELEMENT[precision]


def free_device_memory(device: str) -> int | None:
    """Free bytes on a CUDA device (what the driver reports), or None on the CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def auto_batch_size(device: str, bytes_per_item: int, *, requested: int | None = None,
                    headroom: float = 0.7, cap: int = 64, cpu_default: int = CPU_BATCH_SIZE) -> int:
    """The batch size to use: `requested` if given, else what fits in `headroom` of free GPU memory.

    Call after the weights are on the device, so the free memory already excludes them.
    `bytes_per_item` is the pass's estimate of one item's peak activation memory.
    """
    if requested is not None:
        return requested
    free = free_device_memory(device)
    if free is None:
        return cpu_default
    fits = int(free * headroom) // max(1, bytes_per_item)
    chosen = max(1, min(cap, fits))
    log.info("batch size %d (%.1f GiB free on %s, ~%.0f MiB per item)", chosen, free / 2**30, device,
             bytes_per_item / 2**20)
    return chosen


def to_device(tensor: Any, device: str, dtype: Any = None) -> Any:
    """Move (and optionally cast) a tensor; pinned, non-blocking copies on CUDA so the host keeps going."""
    if device.startswith("cuda") and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
        return tensor.to(device=device, dtype=dtype, non_blocking=True)
    return tensor.to(device=device, dtype=dtype)


def synchronize(device: str) -> None:
    """Wait for queued CUDA work (for timing); nothing on the CPU."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(torch.device(device))


def transformers_config(pass_name: str, root: Path, model_type: str, described_as: str) -> Any:
    """The config of a transformers folder, checked to be `model_type` (InfrastructureError otherwise)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(root)
    except (OSError, ValueError, KeyError) as exc:
        raise InfrastructureError(f"{pass_name}: {root} is not a transformers model folder: {exc}") from exc
    if config.model_type != model_type:
        raise InfrastructureError(f"{pass_name}: {root} holds a {config.model_type!r} model, not {described_as}")
    return config
