"""Cheap versions of a shard's source images (names, sizes, mtimes: one stat each, no content read).

An orchestrator observes these to notice a source replaced under the same name without reading the
images or the provenance records; `provenance` still decides, per image, what is stale and why.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from stratum_core.shards import Shard


@dataclass(frozen=True)
class SourceVersion:
    """The version of a shard's sources: `version` changes when any image is replaced, touched or removed."""

    version: str
    images: int
    missing: int  # images of the shard no longer at their path under the input root


def shard_source_version(input_dir: Path, shard: Shard) -> SourceVersion:
    """A digest of each of the shard's images' relative path, size and mtime (ns) under `input_dir`."""
    digest, missing, root = hashlib.sha256(), 0, os.fspath(input_dir)
    for rel in shard.images:  # string paths: one stat per image, nothing else
        try:
            st = os.stat(f"{root}/{rel}")
            line = f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n"
        except OSError:
            missing += 1
            line = f"{rel}\0-\n"
        digest.update(line.encode())
    return SourceVersion(digest.hexdigest()[:24], len(shard.images), missing)
