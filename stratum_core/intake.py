"""Decode a source image once: EXIF orientation, any mode to 8-bit RGB, bucket crop."""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from stratum_core.buckets import Bucket, choose_bucket, cover_crop_box
from stratum_core.errors import ItemError

# PIL's own hard limit (2 × MAX_IMAGE_PIXELS); checked before any pixel is decoded.
MAX_PIXELS = 178_956_970

# EXIF orientations 5–8 swap width and height.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


@dataclass(frozen=True)
class SourceRead:
    """The source file as the intake read it: size and mtime (of the open file) and the sha256 of the
    very bytes that were decoded, so the fingerprint in metadata.json costs no second read."""

    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class Decoded:
    """A source image cropped to its bucket.

    `crop` is (bucket.height, bucket.width, 3) uint8 RGB; `width`/`height` are the
    source size after EXIF orientation; `read` is what the intake read (None when the item was
    built from metadata.json without decoding).
    """

    crop: np.ndarray
    width: int
    height: int
    bucket: Bucket
    read: SourceRead | None = None


def read_source(path: Path) -> tuple[bytes, SourceRead]:
    """The file's bytes (one read) and their fingerprint; size and mtime come from the same open file."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read()
    return data, SourceRead(len(data), st.st_mtime_ns, hashlib.sha256(data).hexdigest())


class _SourceBytes(io.BytesIO):
    """The source's bytes, named like the file in PIL's messages ("cannot identify image file '…/a.jpg'")."""

    def __init__(self, data: bytes, path: Path):
        super().__init__(data)
        self._path = str(path)

    def __repr__(self) -> str:
        return repr(self._path)


def decode(path: Path) -> Decoded:
    """Read `path` once, then open, orient, convert and crop it; raises ItemError with a closed-set reason."""
    try:
        data, read = read_source(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(_SourceBytes(data, path)) as img:
                return replace(_decode_open(img), read=read)
    except ItemError:
        raise
    except Image.DecompressionBombError as exc:
        raise ItemError("too_large", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, Image.UnidentifiedImageError) as exc:
        raise ItemError("decode_error", f"{type(exc).__name__}: {exc}") from exc


def _decode_open(img: Image.Image) -> Decoded:
    raw_w, raw_h = img.size
    if raw_w * raw_h > MAX_PIXELS:
        raise ItemError("too_large", f"{raw_w}x{raw_h} = {raw_w * raw_h} pixels exceeds the limit of {MAX_PIXELS}")
    orientation = img.getexif().get(0x0112, 1)
    if img.format == "JPEG":  # only a JPEG is drafted, and its opened size is the stored one
        guess_w, guess_h = (raw_h, raw_w) if orientation in _SWAPPING_ORIENTATIONS else (raw_w, raw_h)
        _draft_jpeg(img, guess_w, guess_h, choose_bucket(guess_w, guess_h), orientation)
    img.load()
    loaded = img.size
    img = ImageOps.exif_transpose(img) or img
    # The size comes from what the transpose did, never from the tag: some decoders (TIFF) open
    # already oriented, and swapping again would put a portrait into a landscape bucket.
    swapped = img.size != loaded
    width, height = (raw_h, raw_w) if swapped else (raw_w, raw_h)
    bucket = choose_bucket(width, height)
    img = to_rgb(img)
    # The draft may have shrunk the decode; compute the crop in the decoded image's pixels.
    box = cover_crop_box(img.width, img.height, bucket)
    crop = img.resize((bucket.width, bucket.height), Image.Resampling.LANCZOS, box=box)
    return Decoded(np.asarray(crop, dtype=np.uint8), width, height, bucket)


def _draft_jpeg(img: Image.Image, width: int, height: int, bucket: Bucket, orientation: int) -> None:
    """Let libjpeg decode at a reduced DCT scale that still covers the bucket (much faster)."""
    if img.format != "JPEG":
        return
    scale = max(bucket.width / width, bucket.height / height)
    need_w, need_h = math.ceil(width * scale), math.ceil(height * scale)
    if orientation in _SWAPPING_ORIENTATIONS:
        need_w, need_h = need_h, need_w
    img.draft(img.mode if img.mode in ("RGB", "L") else None, (need_w, need_h))


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB; transparency is composited on white."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        img = Image.fromarray(_to_uint8(np.asarray(img), sixteen_bit=img.mode in _SIXTEEN_BIT_MODES), "L")
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")  # a tRNS colour key or palette alpha becomes a real alpha channel
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _to_uint8(values: np.ndarray, sixteen_bit: bool = False) -> np.ndarray:
    """High-bit-depth grey to 8 bits: 16-bit range → /257, float [0,1] → ×255.

    A 16-bit image is always scaled (a dark one with every value ≤ 255 must not pass
    as 8-bit); for 32-bit integer mode the range is guessed from the values.
    """
    is_float = values.dtype.kind == "f"
    values = np.nan_to_num(values.astype(np.float64))
    if is_float and values.size and values.max() <= 1.0:
        values = values * 255.0
    elif sixteen_bit or (values.size and values.max() > 255):
        values = values / 257.0
    return np.clip(values, 0, 255).round().astype(np.uint8)
