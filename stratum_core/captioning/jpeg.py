"""The bucket crop as the JPEG bytes sent to the caption server."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

JPEG_QUALITY = 95


def encode_jpeg(crop: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """(H, W, 3) uint8 RGB → baseline JPEG bytes of exactly W×H pixels."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(crop), "RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
