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

# Fixed widths of the model artifacts; the passes and publish import these rather than restate them.
DINOV3_WIDTH = 1024  # dinov3_cls / dinov3_patches feature width (ViT-L hidden size)
T5_TOKENS = 512  # t5_hidden / t5_mask rows: captions padded or truncated to this many tokens
T5_WIDTH = 1024  # t5_hidden width (T5-large d_model)
POSE_KEYPOINTS = 133  # pose.npy rows: COCO-WholeBody keypoints

# float16 unit vectors are only unit to about 1e-3; allow a little more for interpolation.
NORMAL_TOLERANCE = 1e-2


# Value checks read float16 arrays through their bit patterns: integer max reductions are
# vectorised and need no temporary arrays, where np.isfinite / min / max on float16 convert
# every element (~30x slower on 8 MiB of DINOv3 patches). Each gives the verdict of the plain
# float check it replaces; tests pin NaN, inf, -0.0, out-of-range and non-unit cases.
_F16_EXP = 0x7C00  # exponent bits all set: inf or NaN
_F16_ONE = 0x3C00  # 1.0
_F16_NEG_ZERO = 0x8000  # -0.0; every negative half is above it as uint16
_F16_NEG_INF = 0xFC00  # -inf; negative NaNs are above it as uint16
_F16_TO_F32 = np.float32(2.0 ** 112)  # rebias a half's bits shifted into a float32 (exact, subnormals too)
_NORMAL_CHUNK = 3 * 2 ** 15  # float16 values per chunk of the normals check (fits in L2 cache)


def _half_bits(a: np.ndarray) -> tuple[int, int]:
    """(max as int16, max as uint16) of a float16 array's bits: enough to decide finiteness and [0, 1]."""
    return int(a.view(np.int16).max()), int(a.view(np.uint16).max())


def is_finite(a: np.ndarray) -> bool:
    """np.isfinite(a).all(), from the bits for float16: positive inf/NaN are the int16 values
    from 0x7C00 up, negative inf/NaN the uint16 values from 0xFC00 up."""
    if a.dtype != np.float16:
        return bool(np.isfinite(a).all())
    if a.size == 0:
        return True
    signed_max, unsigned_max = _half_bits(a)
    return signed_max < _F16_EXP and unsigned_max < _F16_NEG_INF


def _seg_ids(a: np.ndarray) -> str | None:
    return None if a.size == 0 or int(a.max()) <= len(SEG_CLASSES) - 1 else f"class id {int(a.max())} > 27"


def _binary(a: np.ndarray) -> str | None:
    ok = int(a.max()) <= 1 if a.dtype == np.uint8 and a.size else bool(np.isin(a, (0, 1)).all())
    return None if ok else "values other than 0 and 1"


def _unit_interval(a: np.ndarray) -> str | None:
    """All values in [0, 1] (-0.0 counts as 0). For float16: no positive half above 1.0 (int16 view)
    and no negative half but -0.0 (uint16 view)."""
    if a.size == 0:
        return None
    if a.dtype == np.float16:
        signed_max, unsigned_max = _half_bits(a)
        ok = signed_max <= _F16_ONE and unsigned_max <= _F16_NEG_ZERO
    else:
        ok = a.min() >= 0 and a.max() <= 1
    return None if ok else "values outside [0, 1]"


def _unit_or_zero(a: np.ndarray) -> str | None:
    """Every vector of the last axis has float32 norm 0 or within NORMAL_TOLERANCE of 1."""
    if a.dtype != np.float16 or a.ndim == 0 or a.shape[-1] != 3:
        norms = np.linalg.norm(a.astype(np.float32), axis=-1)
        bad = int(((norms > 0) & (np.abs(norms - 1) > NORMAL_TOLERANCE)).sum())
    else:
        bad = _non_unit_halves(np.ascontiguousarray(a).view(np.uint16).reshape(-1))
    return f"{bad} vectors neither unit nor zero" if bad else None


def _non_unit_halves(bits: np.ndarray) -> int:
    """How many xyz float16 vectors (flat uint16 bits) have a float32 norm neither 0 nor unit.

    The same float32 arithmetic as np.linalg.norm ((x² + y²) + z², then sqrt), chunked so it
    stays in cache, with |x| converted from its bits by a shift and a multiply (numpy's float16
    cast is slow). sqrt is monotone, so "sqrt within the tolerance of 1" is "the squared norm in
    [_UNIT_LOW, _UNIT_HIGH]", one unsigned compare on the float32 bits.
    """
    work = np.empty(min(_NORMAL_CHUNK, bits.size), np.uint32)
    bad = 0
    for start in range(0, bits.size, _NORMAL_CHUNK):
        chunk = bits[start:start + _NORMAL_CHUNK]
        w = work[:chunk.size]
        np.bitwise_and(chunk, 0x7FFF, out=w, casting="unsafe")
        w <<= 13
        f = w.view(np.float32)
        f *= _F16_TO_F32
        f *= f
        squared = f[0::3] + f[1::3]
        squared += f[2::3]
        ordered = squared.view(np.uint32)  # non-negative float32 bits sort as their values
        zeros = ordered.size - np.count_nonzero(ordered)
        ordered -= _UNIT_LOW  # below the band wraps around to above it
        bad += int(np.count_nonzero(ordered > _UNIT_SPAN)) - zeros
    return bad


def _unit_band() -> tuple[np.uint32, np.uint32]:
    """float32 bits of the smallest squared norm whose sqrt is within NORMAL_TOLERANCE of 1, and the
    span to the largest: np.linalg.norm's own arithmetic evaluated on every float32 near both edges."""
    def within(low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
        squared = np.arange(np.float32(low).view(np.uint32), np.float32(high).view(np.uint32),
                            dtype=np.uint32).view(np.float32)
        ok = np.abs(np.sqrt(squared) - 1) <= np.float32(NORMAL_TOLERANCE)
        assert ok[0] != ok[-1] and np.count_nonzero(ok[1:] != ok[:-1]) == 1  # one edge in the window
        return squared, ok

    edge = 1 + NORMAL_TOLERANCE
    below, ok_below = within((2 - edge) ** 2 * 0.999, (2 - edge) ** 2 * 1.001)
    above, ok_above = within(edge ** 2 * 0.999, edge ** 2 * 1.001)
    low = below[np.argmax(ok_below)].view(np.uint32)
    high = above[len(ok_above) - 1 - np.argmax(ok_above[::-1])].view(np.uint32)
    return np.uint32(low), np.uint32(high - low)


_UNIT_LOW, _UNIT_SPAN = _unit_band()


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
    Artifact("dinov3_cls", "dinov3_cls.npy", "dinov3", "npy", "float16", lambda b: (DINOV3_WIDTH,),
             description="DINOv3 CLS token (pooled output)"),
    Artifact("dinov3_patches", "dinov3_patches.npy", "dinov3", "npy", "float16",
             lambda b: (b.patch_grid[0] * b.patch_grid[1], DINOV3_WIDTH),
             description="DINOv3 patch tokens, row-major grid, registers excluded"),
    Artifact("t5_hidden", "t5_hidden.npy", "t5", "npy", "float16", lambda b: (T5_TOKENS, T5_WIDTH),
             description="T5-large encoder hidden states of the caption, encoded with the attention mask "
                         "(padding masked out, as transformers does; SD3/Flux pipelines encode unmasked)"),
    Artifact("t5_mask", "t5_mask.npy", "t5", "npy", "uint8", lambda b: (T5_TOKENS,), _binary,
             description="1 = valid token, 0 = padding"),
    Artifact("pose", "pose.npy", "pose", "npy", "float16", lambda b: (POSE_KEYPOINTS, 3),
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
    if value.dtype.kind == "f" and not is_finite(value):
        return "non-finite values"
    return artifact.check(value) if artifact.check else None


def load_json_bytes(data: bytes) -> dict:
    value = json.loads(data.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("metadata.json is not an object")
    return value
