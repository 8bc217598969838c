"""Device choice: `auto` takes a GPU that no other stratum run on this machine holds.

`auto` holds an exclusive flock on the GPU's lock file; an explicit `cuda:N` holds a shared one,
so later `auto` runs avoid that GPU while explicit runs may still share it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from stratum_core.errors import ConfigError, InfrastructureError

log = logging.getLogger("stratum.devices")

_CUDA = re.compile(r"cuda(?::(\d+))?")


@dataclass
class DeviceClaim:
    """A resolved device; for a GPU, holds an flock on its lock file (when it got one) until released."""

    device: str
    _lock_file: IO | None = None

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def _lock_path(index: int, lock_dir: Path | None) -> Path:
    """Per machine, shared by every user: the one file stratum writes outside the output (documented)."""
    return Path(lock_dir or tempfile.gettempdir()) / f"stratum-gpu-{index}.lock"


def _try_lock(index: int, lock_dir: Path | None, *, shared: bool = False) -> IO | None:
    """An exclusive (or shared) flock on the GPU's lock file, or None when another run's lock
    excludes it (or we may not open the file)."""
    try:
        fd = os.open(_lock_path(index, lock_dir), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # another user's file in a sticky /tmp: treat the GPU as taken
        return None
    f = os.fdopen(fd, "r+")
    try:
        fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def cuda_device_count() -> int:
    """Visible CUDA devices: torch's count, or the NVIDIA driver's when torch sees none.

    Torch sees none when it is missing or a CPU-only build; the driver's count still lets `auto`
    claim a GPU for onnxruntime-gpu (pose), and torch passes then stop with `require_torch_cuda`'s
    message rather than silently running on the CPU.
    """
    return _torch_gpu_count() or _driver_gpu_count()


def _torch_gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def require_torch_cuda(device: str) -> None:
    """Raise one clear InfrastructureError when `device` is a GPU that torch cannot use.

    For torch passes, before loading: a claim may name a GPU that only the driver reports
    (see `cuda_device_count`), and torch's own error for that is an obscure AssertionError.
    """
    if not device.startswith("cuda"):
        return
    import torch

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:  # ROCm builds speak "cuda" too
        raise InfrastructureError(f"--device {device}: torch has no CUDA: install a CUDA build of torch, "
                                  f"or use --device cpu")
    if not torch.cuda.is_available():
        raise InfrastructureError(f"--device {device}: torch {torch.__version__} is a CUDA build but cannot "
                                  f"use CUDA (check the NVIDIA driver), or use --device cpu")
    match = _CUDA.fullmatch(device)
    index = int(match.group(1) or 0) if match else 0
    if index >= torch.cuda.device_count():
        raise InfrastructureError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)")


def _driver_gpu_count(driver_dir: Path = Path("/proc/driver/nvidia/gpus")) -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        present = len(os.listdir(driver_dir))
    except OSError:
        return 0
    if visible is None:
        return present
    return min(present, len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")]))


def claim_device(spec: str, *, gpu_count: int | None = None, lock_dir: Path | None = None) -> DeviceClaim:
    """`auto | cpu | cuda | cuda:N` → a concrete device string."""
    spec = spec.strip().lower()
    if spec == "cpu":
        return DeviceClaim("cpu")
    count = cuda_device_count() if gpu_count is None else gpu_count
    if spec == "auto":
        for index in range(count):
            lock = _try_lock(index, lock_dir)
            if lock is not None:
                return DeviceClaim(f"cuda:{index}", lock)
        if count:
            log.warning("every GPU is held by another stratum run; sharing cuda:0")
            return DeviceClaim("cuda:0")
        return DeviceClaim("cpu")
    match = _CUDA.fullmatch(spec)
    if match:
        index = int(match.group(1) or 0)
        if index >= count:
            raise ConfigError(f"--device {spec}: {count} CUDA device(s) visible")
        return _claim_explicit(index, lock_dir)
    raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")


def _claim_explicit(index: int, lock_dir: Path | None) -> DeviceClaim:
    """The GPU the user named: always used, with a shared lock so that `auto` runs pick another.

    A GPU an `auto` run already holds is still used (the user asked for it), with a warning.
    """
    lock = _try_lock(index, lock_dir, shared=True)
    if lock is None:
        log.warning("--device cuda:%d: another stratum run holds this GPU (or its lock file %s cannot be "
                    "opened); running on it anyway", index, _lock_path(index, lock_dir))
    return DeviceClaim(f"cuda:{index}", lock)
