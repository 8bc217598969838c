"""Device choice: `auto` takes a GPU that no other stratum run on this machine holds.

`auto` holds an exclusive flock on the GPU's lock file; an explicit `cuda:N` holds a shared one,
so later `auto` runs avoid that GPU while explicit runs may still share it. When every GPU is held,
`auto` waits (bounded, with a message) for one to free, then fails with an InfrastructureError; it never
doubles up on a GPU another run holds.

Lock files are named by the GPU's UUID (so runs that see the GPUs in different orders, through
CUDA_VISIBLE_DEVICES, still agree) and live in DEFAULT_LOCK_DIR, `/dev/shm/stratum-gpu-locks`: one
directory per host, shared by every user and untouched by a service's private /tmp (docs/scale-out.md).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from stratum_core.errors import ConfigError, InfrastructureError

log = logging.getLogger("stratum.devices")

_CUDA = re.compile(r"cuda(?::(\d+))?")
_SHM = Path("/dev/shm")
DEFAULT_LOCK_DIR = _SHM / "stratum-gpu-locks"
DEFAULT_WAIT_S = 300.0  # how long `auto` waits for a GPU when every one is held
_POLL_S = 1.0


@dataclass
class DeviceClaim:
    """A resolved device; for a GPU, holds an flock on its lock file (when it got one) until released."""

    device: str
    _lock_file: IO | None = None

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def default_lock_dir() -> Path:
    """DEFAULT_LOCK_DIR where the host has /dev/shm (Linux), else the temp dir (a single-user machine)."""
    return DEFAULT_LOCK_DIR if _SHM.is_dir() else Path(tempfile.gettempdir()) / "stratum-gpu-locks"


def _lock_path(gpu_id: str, lock_dir: Path | None) -> Path:
    """Per host, shared by every user: the one file stratum writes outside the output (documented)."""
    return Path(lock_dir or default_lock_dir()) / f"stratum-gpu-{gpu_id}.lock"


def _shared_dir(path: Path) -> None:
    """Create the lock directory writable by every user (sticky, like /tmp), whatever our umask."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(path, 0o1777)
    except OSError:  # another user created it first: theirs already is 1777
        pass


def _open_lock(path: Path) -> int:
    """Open (or create, mode 0666 whatever the umask) a lock file; any user may lock any user's file.

    Opened read-only when another user's file is not writable to us: flock needs no write access.
    """
    try:
        return os.open(path, os.O_RDWR)
    except FileNotFoundError:
        pass
    except PermissionError:
        return os.open(path, os.O_RDONLY)
    _shared_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:  # another run created it just now
        return os.open(path, os.O_RDWR)
    os.fchmod(fd, 0o666)  # the umask would drop other users' write bit
    return fd


def _try_lock(gpu_id: str, lock_dir: Path | None, *, shared: bool = False) -> IO | None:
    """An exclusive (or shared) flock on the GPU's lock file, or None when another run's lock
    excludes it (or we may not open the file)."""
    try:
        fd = _open_lock(_lock_path(gpu_id, lock_dir))
    except OSError:  # no access to the directory or file at all: treat the GPU as taken
        return None
    writable = _fd_writable(fd)
    f = os.fdopen(fd, "r+" if writable else "r")
    try:
        fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    if writable:  # the holder's pid, for whoever finds the GPU taken
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
    return f


def _fd_writable(fd: int) -> bool:
    return (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) != os.O_RDONLY


def gpu_ids(count: int) -> list[str]:
    """A stable id per visible CUDA index, for the lock file names: the GPU's UUID where it can be found
    (torch, else CUDA_VISIBLE_DEVICES given as UUIDs, else the NVIDIA driver's list), else the index."""
    found = _torch_gpu_uuids() or _visible_uuids() or _driver_gpu_uuids()
    return [found[i] if i < len(found) else str(i) for i in range(count)]


def _torch_gpu_uuids() -> list[str]:
    if not _torch_gpu_count():
        return []
    import torch

    try:
        return [f"GPU-{torch.cuda.get_device_properties(i).uuid}" for i in range(torch.cuda.device_count())]
    except (AttributeError, RuntimeError):  # an old torch without `.uuid`, or a driver error
        return []


def _visible_uuids() -> list[str]:
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible if visible and all(d.startswith(("GPU-", "MIG-")) for d in visible) else []


def _driver_gpu_uuids(driver_dir: Path = Path("/proc/driver/nvidia/gpus")) -> list[str]:
    """UUIDs from the driver, in PCI bus order, narrowed by numeric CUDA_VISIBLE_DEVICES (CUDA numbers
    GPUs in PCI order with CUDA_DEVICE_ORDER=PCI_BUS_ID, and on hosts of one GPU model)."""
    try:
        infos = sorted(driver_dir.iterdir())
    except OSError:
        return []
    uuids = []
    for info in infos:
        try:
            text = (info / "information").read_text()
        except OSError:
            return []
        match = re.search(r"GPU UUID:\s*(\S+)", text)
        if not match:
            return []
        uuids.append(match.group(1))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return uuids
    indices = [d.strip() for d in visible.split(",") if d.strip()]
    if not all(d.isdigit() for d in indices):
        return []
    return [uuids[int(d)] for d in indices if int(d) < len(uuids)]


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


def claim_device(spec: str, *, gpu_count: int | None = None, lock_dir: Path | None = None,
                 ids: list[str] | None = None, wait_s: float = DEFAULT_WAIT_S) -> DeviceClaim:
    """`auto | cpu | cuda | cuda:N` → a concrete device string.

    `ids` are the GPUs' lock ids by CUDA index (default: `gpu_ids`); `auto` waits up to `wait_s` seconds
    when every GPU is held, then raises InfrastructureError.
    """
    spec = spec.strip().lower()
    if spec == "cpu":
        return DeviceClaim("cpu")
    count = cuda_device_count() if gpu_count is None else gpu_count
    keys = (ids or gpu_ids(count))[:count]
    if spec == "auto":
        return _claim_free(keys, lock_dir, wait_s) if count else DeviceClaim("cpu")
    match = _CUDA.fullmatch(spec)
    if match:
        index = int(match.group(1) or 0)
        if index >= count:
            raise ConfigError(f"--device {spec}: {count} CUDA device(s) visible")
        return _claim_explicit(index, keys[index], lock_dir)
    raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")


def _claim_free(keys: list[str], lock_dir: Path | None, wait_s: float) -> DeviceClaim:
    """The first GPU no other run holds, waiting up to `wait_s` for one; never a GPU another run holds."""
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        for index, key in enumerate(keys):
            lock = _try_lock(key, lock_dir)
            if lock is not None:
                if told:
                    log.info("cuda:%d is free now; running on it", index)
                return DeviceClaim(f"cuda:{index}", lock)
        if time.monotonic() >= deadline:
            raise InfrastructureError(
                f"every GPU ({len(keys)}) is held by another stratum run (lock files in "
                f"{lock_dir or default_lock_dir()}); waited {wait_s:.0f} s. Run fewer at once (the Dagster "
                f"`gpu` pool and max_concurrent_runs at most the GPU count), or name a GPU with --device cuda:N")
        if not told:
            log.warning("every GPU (%d) is held by another stratum run; waiting up to %.0f s for one to free "
                        "(lock files in %s)", len(keys), wait_s, lock_dir or default_lock_dir())
            told = True
        time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))


def _claim_explicit(index: int, key: str, lock_dir: Path | None) -> DeviceClaim:
    """The GPU the user named: always used, with a shared lock so that `auto` runs pick another.

    A GPU an `auto` run already holds is still used (the user asked for it), with a warning.
    """
    lock = _try_lock(key, lock_dir, shared=True)
    if lock is None:
        log.warning("--device cuda:%d: another stratum run holds this GPU (or its lock file %s cannot be "
                    "opened); running on it anyway", index, _lock_path(key, lock_dir))
    return DeviceClaim(f"cuda:{index}", lock)
