"""The artifact table: the one place that says what each pass writes and what a valid file is.

Writing (store), `status`, `verify` and `publish` all read this table.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from stratum_core.buckets import Bucket

METADATA_KEYS = ("image_id", "source_path", "width", "height", "aspect_bucket")

SEG_CLASSES: tuple[str, ...] = (
    "Background", "Apparel", "Face_Neck", "Hair", "Left_Foot", "Left_Hand", "Left_Lower_Arm",
    "Left_Lower_Leg", "Left_Shoe", "Left_Sock", "Left_Upper_Arm", "Left_Upper_Leg", "Lower_Clothing",
    "Right_Foot", "Right_Hand", "Right_Lower_Arm", "Right_Lower_Leg", "Right_Shoe", "Right_Sock",
    "Right_Upper_Arm", "Right_Upper_Leg", "Torso", "Upper_Clothing", "Lower_Lip", "Upper_Lip",
    "Lower_Teeth", "Upper_Teeth", "Tongue",
)

# float16 unit vectors are only unit to about 1e-3; allow a little more for interpolation.
NORMAL_TOLERANCE = 1e-2


def _seg_ids(a: np.ndarray) -> str | None:
    return None if a.size == 0 or int(a.max()) <= len(SEG_CLASSES) - 1 else f"class id {int(a.max())} > 27"


def _binary(a: np.ndarray) -> str | None:
    return None if np.isin(a, (0, 1)).all() else "values other than 0 and 1"


def _unit_interval(a: np.ndarray) -> str | None:
    return None if a.size == 0 or (a.min() >= 0 and a.max() <= 1) else "values outside [0, 1]"


def _unit_or_zero(a: np.ndarray) -> str | None:
    norms = np.linalg.norm(a.astype(np.float32), axis=-1)
    bad = (norms > 0) & (np.abs(norms - 1) > NORMAL_TOLERANCE)
    return f"{int(bad.sum())} vectors neither unit nor zero" if bad.any() else None


@dataclass(frozen=True)
class Artifact:
    """One file per image. `shape` maps the image's bucket to the array shape (npy only)."""

    name: str
    filename: str
    pass_name: str
    kind: str  # "npy" | "text" | "json"
    dtype: str | None = None
    shape: Callable[[Bucket], tuple[int, ...]] | None = None
    check: Callable[[np.ndarray], str | None] | None = None
    description: str = ""


ARTIFACTS: tuple[Artifact, ...] = (
    Artifact("metadata", "metadata.json", "metadata", "json",
             description="image_id, source_path, width, height, aspect_bucket"),
    Artifact("caption", "caption.txt", "caption", "text", description="one dense paragraph"),
    Artifact("dinov3_cls", "dinov3_cls.npy", "dinov3", "npy", "float16", lambda b: (1024,),
             description="DINOv3 CLS token (pooled output)"),
    Artifact("dinov3_patches", "dinov3_patches.npy", "dinov3", "npy", "float16",
             lambda b: (b.patch_grid[0] * b.patch_grid[1], 1024),
             description="DINOv3 patch tokens, row-major grid, registers excluded"),
    Artifact("t5_hidden", "t5_hidden.npy", "t5", "npy", "float16", lambda b: (512, 1024),
             description="T5-large encoder hidden states of the caption, encoded with the attention mask "
                         "(padding masked out, as transformers does; SD3/Flux pipelines encode unmasked)"),
    Artifact("t5_mask", "t5_mask.npy", "t5", "npy", "uint8", lambda b: (512,), _binary,
             description="1 = valid token, 0 = padding"),
    Artifact("pose", "pose.npy", "pose", "npy", "float16", lambda b: (133, 3),
             description="COCO-WholeBody keypoints: x, y in [-1, 1] of the bucket, confidence"),
    Artifact("seg", "seg.npy", "seg", "npy", "uint8", lambda b: (b.height, b.width), _seg_ids,
             description="Sapiens body-part class ids 0-27"),
    Artifact("depth", "depth.npy", "depth", "npy", "float16", lambda b: (b.height, b.width), _unit_interval,
             description="relative depth, foreground min-max scaled to [0, 1], background 0"),
    Artifact("normal", "normal.npy", "normal", "npy", "float16", lambda b: (b.height, b.width, 3), _unit_or_zero,
             description="surface normals, unit on foreground, 0 on background"),
    Artifact("pixel", "pixel.npy", "pixel", "npy", "float16", lambda b: (3, b.height, b.width), _unit_interval,
             description="the bucket crop, CHW in [0, 1] (opt-in)"),
)

BY_NAME: dict[str, Artifact] = {a.name: a for a in ARTIFACTS}
BY_FILENAME: dict[str, Artifact] = {a.filename: a for a in ARTIFACTS}


def artifacts_of(pass_name: str) -> tuple[Artifact, ...]:
    return tuple(a for a in ARTIFACTS if a.pass_name == pass_name)


@functools.cache
def pass_files(pass_name: str) -> frozenset[str]:
    """The file names a pass writes: an image is done for that pass when all are present."""
    return frozenset(a.filename for a in artifacts_of(pass_name))


def pass_names() -> tuple[str, ...]:
    """Every pass that writes an artifact, in table order (which is also dependency order)."""
    return tuple(dict.fromkeys(a.pass_name for a in ARTIFACTS))


def validate_value(artifact: Artifact, value: Any, bucket: Bucket | None) -> str | None:
    """Why `value` is not a valid `artifact` for an image of `bucket`, or None when it is."""
    if artifact.kind == "text":
        if not isinstance(value, str) or not value.strip():
            return "empty text"
        return "more than one paragraph" if "\n" in value.strip() else None
    if artifact.kind == "json":
        missing = [k for k in METADATA_KEYS if k not in value]
        return f"missing keys {missing}" if missing else None
    if not isinstance(value, np.ndarray):
        return f"expected an array, got {type(value).__name__}"
    if str(value.dtype) != artifact.dtype:
        return f"dtype {value.dtype} != {artifact.dtype}"
    if bucket is not None and artifact.shape is not None and value.shape != artifact.shape(bucket):
        return f"shape {value.shape} != {artifact.shape(bucket)}"
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        return "non-finite values"
    return artifact.check(value) if artifact.check else None


def load_json_bytes(data: bytes) -> dict:
    value = json.loads(data.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("metadata.json is not an object")
    return value
