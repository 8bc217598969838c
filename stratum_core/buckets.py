"""Aspect buckets (~1 MP, multiples of 64) and the resize-to-cover centre-crop geometry."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True, order=True)
class Bucket:
    """A target size in pixels, width × height."""

    width: int
    height: int

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of 16-pixel patches."""
        return self.height // 16, self.width // 16

    @classmethod
    def parse(cls, label: str) -> Bucket:
        """`"832x1216"` → Bucket(832, 1216); ValueError unless it is one of the seven buckets (a made-up
        size would let arrays of any shape pass as valid)."""
        w, h = label.lower().split("x")
        bucket = cls(int(w), int(h))
        if bucket not in BUCKETS:
            raise ValueError(f"{label!r} is not one of the 7 buckets")
        return bucket


# Order matters: ties are won by the earlier bucket.
BUCKETS: tuple[Bucket, ...] = (
    Bucket(1024, 1024),
    Bucket(832, 1216),
    Bucket(1216, 832),
    Bucket(768, 1280),
    Bucket(1280, 768),
    Bucket(704, 1344),
    Bucket(1344, 704),
)


def choose_bucket(width: int, height: int) -> Bucket:
    """The bucket whose aspect ratio is closest to width/height (first wins ties)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    # Exact fractions: with floats, a true tie (16x13 between 1:1 and 19:13) can go to the later bucket.
    aspect = Fraction(width, height)
    return min(BUCKETS, key=lambda b: abs(Fraction(b.width, b.height) - aspect))


def cover_crop_box(width: int, height: int, bucket: Bucket) -> tuple[float, float, float, float]:
    """The centred source region (left, top, right, bottom) with the bucket's aspect.

    Resizing this region to the bucket size equals resize-to-cover followed by a
    centre crop, without ever materialising the (possibly huge) covered image.
    """
    # The covering side spans the whole source exactly; dividing by a float scale instead can
    # give an offset of -1e-15, which Pillow refuses ("box offset can't be negative").
    if bucket.width * height >= bucket.height * width:  # width is the covering side
        region_h = bucket.height * width / bucket.width
        top = (height - region_h) / 2
        return 0.0, top, float(width), top + region_h
    region_w = bucket.width * height / bucket.height
    left = (width - region_w) / 2
    return left, 0.0, left + region_w, float(height)
