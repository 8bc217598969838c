"""Is a local file the same as the repo's copy? (LFS sha256, or the git blob sha1 of regular files)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from stratum_core.publish.pack import file_sha256


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def same_remote_content(remote, local: Path | bytes) -> bool:
    """`remote` is a hub.RemoteFile or None; `local` a path or the bytes to upload."""
    if remote is None:
        return False
    size = len(local) if isinstance(local, bytes) else Path(local).stat().st_size
    if remote.size != size:
        return False
    if remote.sha256:
        digest = hashlib.sha256(local).hexdigest() if isinstance(local, bytes) else file_sha256(Path(local))
        return digest == remote.sha256
    data = local if isinstance(local, bytes) else Path(local).read_bytes()
    return git_blob_sha1(data) == remote.blob_id
