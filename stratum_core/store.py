"""The output tree: one directory per image, atomic writes, failure records.

The filesystem is the database: an artifact file is an "ok" row, and a failed
(image, pass) is a small `.failed-<pass>.json` record next to it, removed when a
later run succeeds.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np

from stratum_core.artifacts import Artifact, load_json_bytes
from stratum_core.errors import ConfigError

FAILURE_PREFIX = ".failed-"
STATE_DIR = ".stratum"


class Store:
    """Reads and writes artifacts under `root`; never writes outside it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._root_str = str(self.root)

    def image_dir(self, image_id: str) -> Path:
        return Path(self._image_dir_str(image_id))

    def _image_dir_str(self, image_id: str) -> str:
        """String form for the per-image hot paths (pathlib parsing costs more than the syscall)."""
        # Refuse empty, "." and ".." components and the state dir, with C-speed substring tests.
        wrapped = f"/{image_id}/"
        if not image_id or "//" in wrapped or "/./" in wrapped or "/../" in wrapped or \
                wrapped.startswith(f"/{STATE_DIR}/"):
            raise ValueError(f"unsafe image id {image_id!r}")
        return f"{self._root_str}/{image_id}"

    def path(self, image_id: str, artifact: Artifact) -> Path:
        return self.image_dir(image_id) / artifact.filename

    def listing(self, image_id: str) -> set[str]:
        """Names of the files in the image's directory (one listing; empty if absent).

        Folders are left out: `a/pixel.npy/` (another image's folder) is not image `a`'s artifact.
        """
        try:
            with os.scandir(self._image_dir_str(image_id)) as it:
                return {e.name for e in it if not e.is_dir(follow_symlinks=False)}
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def write(self, image_id: str, artifact: Artifact, value: Any) -> Path:
        """Atomically write one artifact (temp file in the same directory, then rename)."""
        target = self.path(image_id, artifact)
        if artifact.kind == "npy":
            array = np.ascontiguousarray(value)
            # Streamed into the temp file: no in-memory copy of a large array.
            write_atomic(target, lambda f: write_npy(f, array))
        else:
            write_atomic(target, encode(artifact, value))
        return target

    def read(self, image_id: str, artifact: Artifact) -> Any:
        path = self.path(image_id, artifact)
        if artifact.kind == "npy":  # np.load reads the file straight into the array: no bytes copy first
            return np.load(path, allow_pickle=False)
        return decode_bytes(artifact, path.read_bytes())

    def record_failure(self, image_id: str, pass_name: str, reason: str, message: str) -> None:
        record = {"pass": pass_name, "reason": reason, "message": message[:2000], "time": time.time()}
        write_atomic(self.image_dir(image_id) / f"{FAILURE_PREFIX}{pass_name}.json",
                     json.dumps(record).encode())

    def clear_failure(self, image_id: str, pass_name: str) -> None:
        try:
            os.unlink(self.image_dir(image_id) / f"{FAILURE_PREFIX}{pass_name}.json")
        except FileNotFoundError:
            pass

    def read_failure(self, image_id: str, pass_name: str) -> dict | None:
        try:
            return json.loads((self.image_dir(image_id) / f"{FAILURE_PREFIX}{pass_name}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR


def write_npy(f: BinaryIO, array: np.ndarray) -> None:
    """The bytes of `np.save` (format 1.0) for a C-contiguous array, written through `f.write`.

    numpy's own writer hands a real file to `ndarray.tofile`, whose short write on a full disk
    raises an OSError without errno ("N requested and M written"); through `f.write` a full disk
    is ENOSPC, which the engine needs to stop the run.
    """
    if array.dtype.hasobject:
        raise ValueError("object arrays are not stored")
    np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
    if array.size:
        f.write(memoryview(array).cast("B"))


def encode(artifact: Artifact, value: Any) -> bytes:
    """Text and JSON artifacts as bytes (npy arrays are streamed by Store.write)."""
    if artifact.kind == "text":
        return value.encode("utf-8")
    return json.dumps(value, ensure_ascii=False, indent=1).encode("utf-8")


def decode_bytes(artifact: Artifact, data: bytes) -> Any:
    if artifact.kind == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if artifact.kind == "text":
        return data.decode("utf-8")
    return load_json_bytes(data)


# A write that failed for one of these fails for every file after it: the engine stops the run.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP}  # os.link on filesystems without links


def write_atomic(target: Path, data: bytes | Callable[[BinaryIO], Any], replace: bool = True) -> None:
    """Write `data` (bytes, or a function writing to the open file) to a hidden temp file beside
    `target`, fsync-free, then rename it over `target`.

    With `replace=False`, `target` is only created, never replaced (FileExistsError if it exists):
    the finished temp file is hard-linked to it, or where links are refused, copied into an
    exclusively created file (which a crash mid-copy may leave partial).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(target)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
        if replace:
            os.replace(tmp, target)
        else:
            _link_exclusive(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if not replace:
        _unlink_quietly(tmp)


def _link_exclusive(tmp: str, target: Path) -> None:
    try:
        os.link(tmp, target)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        with open(tmp, "rb") as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _create_temp(target: Path) -> tuple[int, str]:
    """A new hidden `.<name>.<host>~<pid>~<random>.tmp` beside target, created with the umask's permissions.

    The host and pid name the writer, so a later run can tell a dead writer's leftover from a live
    one's file in progress (`sweep_dead_temp_files`). (tempfile.mkstemp would make every artifact
    0600, unreadable to other users of a shared dataset.)
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = os.path.join(target.parent, f".{target.name}.{_WRITER}~{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def is_temp_file(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _writer_tag() -> str:
    """`<host>~<pid>` of this process, the host reduced to characters safe in a file name."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}~{os.getpid()}"


_WRITER = _writer_tag()


def _reset_writer_tag() -> None:
    global _WRITER
    _WRITER = _writer_tag()


os.register_at_fork(after_in_child=_reset_writer_tag)  # a forked child is a different writer

_TEMP_WRITER = re.compile(r"\.([A-Za-z0-9-]+)~(\d+)~[0-9a-f]+\.tmp$")


def sweep_dead_temp_files(directory: Path, names: Iterable[str]) -> int:
    """Remove the temp files among `names` whose writer (this host, a pid no longer alive) is gone.

    A killed run leaves up to one temp file per artifact in flight; this runs when a later run plans
    the image. Temp files of other hosts (a shared output folder) or of live processes are left alone.
    """
    host = _WRITER.split("~", 1)[0]
    removed = 0
    for name in names:
        match = _TEMP_WRITER.search(name) if is_temp_file(name) else None
        if match is None or match.group(1) != host or _alive(int(match.group(2))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def check_output_dir(root: Path) -> None:
    """ConfigError unless `root` is a folder this process can write, or one it can create.

    Checked before any image is decoded: a read-only or non-folder output otherwise fails every
    image, or all the work is lost when the run record cannot be saved. Nothing is left behind
    (a missing output is not created here; a probe file in an existing one is removed).
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--output {root} exists and is not a folder")
    if not root.exists():
        parent = next((p for p in root.absolute().parents if p.exists()), None)
        if parent is None or not parent.is_dir():
            raise ConfigError(f"cannot create the output folder {root}: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):  # EROFS too, even for root
            raise ConfigError(f"cannot create the output folder {root}: {parent} is not writable "
                              f"({'Read-only file system' if _read_only(parent) else 'Permission denied'})")
        return
    probe = root / f".write-check.{_WRITER}~{secrets.token_hex(4)}.tmp"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to the output folder {root}: {exc.strerror or exc}") from exc


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
