"""Load one image's layers for a preview: artifacts from the dataset, the bucket crop from pixel.npy or the source."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stratum_core.artifacts import BY_NAME, validate_value
from stratum_core.buckets import BUCKETS, Bucket
from stratum_core.errors import ItemError
from stratum_core.store import FAILURE_PREFIX, Store

log = logging.getLogger("stratum.preview")

# Array layers a sheet shows; each is validated against the artifact table before it is drawn.
ARRAY_LAYERS = ("pose", "seg", "depth", "normal", "dinov3_patches", "pixel")

# Arrays whose shape gives the bucket away when metadata.json is missing.
_SPATIAL = {"seg": lambda s: s, "depth": lambda s: s, "normal": lambda s: s[:2], "pixel": lambda s: s[1:]}


@dataclass
class ImageLayers:
    """What a sheet needs of one image; a layer that is absent is None and `notes[layer]` says why.

    `crop` is (bh, bw, 3) uint8 RGB; the arrays have the shapes of the artifact table.
    """

    image_id: str
    bucket: Bucket
    metadata: dict | None = None
    caption: str | None = None
    crop: np.ndarray | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    bucket_known: bool = True  # False: no metadata.json nor spatial array says it (`notes["metadata"]` says why)


def load_layers(output_dir: Path, image_id: str, source_dir: Path | None = None) -> ImageLayers:
    """Read every layer of `image_id` under `output_dir`; unreadable or invalid files count as missing."""
    store = Store(output_dir)
    listing = store.listing(image_id)
    if not listing:
        raise FileNotFoundError(f"no image {image_id!r} in {output_dir}")
    metadata, metadata_note = _read(store, image_id, "metadata", listing, None)
    bucket = _bucket_of(store, image_id, metadata, listing)
    layers = ImageLayers(image_id, bucket or BUCKETS[0], metadata, bucket_known=bucket is not None)
    if metadata_note is not None:
        layers.notes["metadata"] = metadata_note
    for name in ARRAY_LAYERS:
        value, note = _read(store, image_id, name, listing, layers.bucket)
        if note is None:
            layers.arrays[name] = value
        else:
            layers.notes[name] = note
    layers.caption, note = _read(store, image_id, "caption", listing, None)
    if note is not None:
        layers.notes["caption"] = note
    layers.crop, note = _crop(layers, source_dir)
    if note is not None:
        layers.notes["crop"] = note
    return layers


def _missing_note(store: Store, image_id: str, listing: set[str], pass_name: str) -> str:
    if f"{FAILURE_PREFIX}{pass_name}.json" not in listing:
        return "not computed"
    record = store.read_failure(image_id, pass_name) or {}
    return f"{pass_name} failed: {record.get('reason', 'unknown reason')}"


def _read(store: Store, image_id: str, name: str, listing: set[str],
          bucket: Bucket | None) -> tuple[Any, str | None]:
    """(value, None), or (None, a short note saying why there is no valid value)."""
    artifact = BY_NAME[name]
    if artifact.filename not in listing:
        return None, _missing_note(store, image_id, listing, artifact.pass_name)
    try:
        value = store.read(image_id, artifact)
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot read %s: %s", image_id, artifact.filename, exc)
        return None, "unreadable"
    problem = validate_value(artifact, value, bucket)
    if problem:
        log.warning("%s: %s is invalid: %s", image_id, artifact.filename, problem)
        return None, "invalid"
    return value, None


def _bucket_of(store: Store, image_id: str, metadata: dict | None, listing: set[str]) -> Bucket | None:
    """The image's bucket from metadata.json, else from a spatial array's shape; None when nothing says."""
    if metadata is not None:
        try:
            return Bucket.parse(str(metadata["aspect_bucket"]))
        except (KeyError, ValueError):
            pass
    for name, height_width in _SPATIAL.items():
        if BY_NAME[name].filename in listing:
            try:
                shape = np.load(store.path(image_id, BY_NAME[name]), mmap_mode="r").shape
                height, width = height_width(shape)
                return Bucket(int(width), int(height))
            except (OSError, ValueError):
                continue
    return None


def _crop(layers: ImageLayers, source_dir: Path | None) -> tuple[np.ndarray | None, str | None]:
    """The bucket crop from pixel.npy (exact), else re-made from the source image, else a note."""
    pixel = layers.arrays.get("pixel")
    if pixel is not None:
        return (np.clip(pixel.astype(np.float32), 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0), None
    if source_dir is None:
        return None, "no pixel.npy and no --source"
    if layers.metadata is None:
        return None, "no metadata.json"
    from stratum_core.intake import decode

    path = Path(source_dir) / str(layers.metadata["source_path"])
    try:
        decoded = decode(path)
    except ItemError as exc:
        log.warning("%s: cannot decode %s: %s", layers.image_id, path, exc.message)
        return None, "source unreadable"
    if decoded.bucket != layers.bucket:
        log.warning("%s: %s now falls in bucket %s, the dataset says %s", layers.image_id, path,
                    decoded.bucket.label, layers.bucket.label)
        return None, "source changed"
    return decoded.crop, None
