"""Which images to preview, and the flat, safe file name of each image's sheet."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Sequence

from stratum_core.artifacts import BY_NAME
from stratum_core.discover import iter_image_dirs

DEFAULT_SAMPLE = 16
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_STEM = 120  # well under the 255-byte file-name limit, with room for a hash


def select_image_ids(dataset_dir: Path, image_ids: Sequence[str], sample: int | None, seed: int) -> list[str]:
    """The ids to preview: the given ones (else every image), then `sample` of them at random.

    With no ids and no `sample`, DEFAULT_SAMPLE images are drawn; `sample` 0 means all. The draw is
    seeded, so one seed on one dataset always gives the same images, listed in sorted order.
    Only decoded images (those with metadata.json) are candidates: a folder holding just the
    failure record of an undecodable file has nothing to show.
    """
    metadata = BY_NAME["metadata"].filename
    candidates = list(dict.fromkeys(image_ids)) or [image_id for image_id, names in iter_image_dirs(dataset_dir)
                                                    if metadata in names]
    if sample is None and not image_ids:
        sample = DEFAULT_SAMPLE
    if not sample or sample >= len(candidates):
        return candidates
    return sorted(random.Random(seed).sample(candidates, sample))


def sheet_filenames(image_ids: Sequence[str]) -> dict[str, str]:
    """image id → a distinct PNG file name without folders (`a/b c` → `a__b_c.png`).

    A hash of the id is added where flattening would make two names equal (case-insensitively,
    for macOS and Windows file systems) or a name too long.
    """
    names: dict[str, str] = {}
    taken: set[str] = set()
    for image_id in image_ids:
        stem = _UNSAFE.sub("_", image_id.replace("/", "__")).strip("._") or "image"
        digest = hashlib.sha1(image_id.encode("utf-8")).hexdigest()[:10]
        if len(stem) > _MAX_STEM:
            stem = f"{stem[:_MAX_STEM]}-{digest}"
        if stem.lower() in taken or stem.lower() == "index":
            stem = f"{stem}-{digest}"
        taken.add(stem.lower())
        names[image_id] = f"{stem}.png"
    return names
