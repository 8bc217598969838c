"""EXIF orientations 1-8 in every format that carries them: the bucket, the oriented size and the pixels
agree (issue 12 defect 2: a TIFF opens already oriented, and its size was swapped a second time)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stratum_core.intake import decode
from stratum_testing.images import ORIENTATION_TAG

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
STORED_W, STORED_H = 300, 200  # landscape as stored; orientations 5-8 display it as portrait

# Displayed (top-left, top-right, bottom-left, bottom-right) quadrant colours of a stored image whose
# quadrants are red, green / blue, white, per the EXIF specification of each orientation.
DISPLAYED = {
    1: (RED, GREEN, BLUE, WHITE),
    2: (GREEN, RED, WHITE, BLUE),  # mirrored left-right
    3: (WHITE, BLUE, GREEN, RED),  # rotated 180°
    4: (BLUE, WHITE, RED, GREEN),  # mirrored top-bottom
    5: (RED, BLUE, GREEN, WHITE),  # transposed (mirrored along the main diagonal)
    6: (BLUE, RED, WHITE, GREEN),  # rotated 90° clockwise to display
    7: (WHITE, GREEN, BLUE, RED),  # transversed (mirrored along the other diagonal)
    8: (GREEN, WHITE, RED, BLUE),  # rotated 90° counter-clockwise to display
}
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif"}


def write_quadrants(path: Path, fmt: str, orientation: int) -> Path:
    img = Image.new("RGB", (STORED_W, STORED_H), WHITE)
    half_w, half_h = STORED_W // 2, STORED_H // 2
    img.paste(RED, (0, 0, half_w, half_h))
    img.paste(GREEN, (half_w, 0, STORED_W, half_h))
    img.paste(BLUE, (0, half_h, half_w, STORED_H))
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    extra = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    img.save(path, fmt, exif=exif.tobytes(), **extra)
    return path


def quadrant_colours(crop: np.ndarray) -> tuple[tuple[int, ...], ...]:
    h, w = crop.shape[:2]
    return tuple(tuple(int(c) for c in crop[y, x]) for y, x in
                 ((h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, w // 4), (3 * h // 4, 3 * w // 4)))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_orientation_gives_the_displayed_size_bucket_and_pixels(tmp_path, fmt, orientation):
    path = write_quadrants(tmp_path / f"q{FORMATS[fmt]}", fmt, orientation)
    decoded = decode(path)
    portrait = orientation >= 5
    assert (decoded.width, decoded.height) == ((STORED_H, STORED_W) if portrait else (STORED_W, STORED_H))
    assert decoded.bucket.label == ("832x1216" if portrait else "1216x832")
    assert decoded.crop.shape == (decoded.bucket.height, decoded.bucket.width, 3)
    for got, want in zip(quadrant_colours(decoded.crop), DISPLAYED[orientation]):
        assert np.abs(np.subtract(got, want)).max() <= 40, (got, want)
