"""Geometry of a contact sheet: where the header, the six layer tiles, the legend and the caption go."""

from __future__ import annotations

from dataclasses import dataclass

from stratum_core.buckets import Bucket

# Tiles in reading order; each shows one layer at the bucket's aspect.
TILE_NAMES = ("image", "pose", "seg", "depth", "normal", "dinov3")
COLUMNS = 3
TILE_LONG_SIDE = 400   # pixels of a tile's longer side
MARGIN = 16            # around the whole sheet
GAP = 12               # between tiles
HEADER_HEIGHT = 34     # image id and sizes
LABEL_HEIGHT = 22      # a tile's name, above the tile
LINE_HEIGHT = 20       # one line of legend or caption
SECTION_GAP = 10       # between the grid, the legend and the caption


@dataclass(frozen=True)
class Rect:
    """An axis-aligned box in sheet pixels: left x, top y, width w, height h."""

    x: int
    y: int
    w: int
    h: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), right and bottom exclusive, as PIL wants it."""
        return self.x, self.y, self.x + self.w, self.y + self.h


@dataclass(frozen=True)
class SheetLayout:
    """Every region of one sheet. `tiles[name]` is the picture itself, `labels[name]` the strip above it."""

    width: int
    height: int
    header: Rect
    tiles: dict[str, Rect]
    labels: dict[str, Rect]
    legend: Rect
    caption: Rect

    @property
    def content_width(self) -> int:
        return self.width - 2 * MARGIN


def tile_size(bucket: Bucket, long_side: int = TILE_LONG_SIDE) -> tuple[int, int]:
    """(width, height) of a tile: the bucket scaled so its longer side is `long_side`."""
    scale = long_side / max(bucket.width, bucket.height)
    return round(bucket.width * scale), round(bucket.height * scale)


def grid_width(bucket: Bucket, long_side: int = TILE_LONG_SIDE) -> int:
    """Width of the tile grid, which is also the width text must wrap to."""
    tile_w, _ = tile_size(bucket, long_side)
    return COLUMNS * tile_w + (COLUMNS - 1) * GAP


def sheet_layout(bucket: Bucket, legend_lines: int = 0, caption_lines: int = 0,
                 long_side: int = TILE_LONG_SIDE) -> SheetLayout:
    """Lay out a sheet for an image of `bucket` with the given numbers of legend and caption lines.

    Tiles go row by row, COLUMNS per row, in TILE_NAMES order; each tile has the bucket's aspect.
    """
    tile_w, tile_h = tile_size(bucket, long_side)
    content_w = grid_width(bucket, long_side)
    header = Rect(MARGIN, MARGIN, content_w, HEADER_HEIGHT)
    grid_top = header.y + header.h
    tiles: dict[str, Rect] = {}
    labels: dict[str, Rect] = {}
    for index, name in enumerate(TILE_NAMES):
        row, col = divmod(index, COLUMNS)
        x = MARGIN + col * (tile_w + GAP)
        y = grid_top + row * (LABEL_HEIGHT + tile_h + GAP)
        labels[name] = Rect(x, y, tile_w, LABEL_HEIGHT)
        tiles[name] = Rect(x, y + LABEL_HEIGHT, tile_w, tile_h)
    rows = -(-len(TILE_NAMES) // COLUMNS)
    grid_bottom = grid_top + rows * (LABEL_HEIGHT + tile_h) + (rows - 1) * GAP
    legend = Rect(MARGIN, grid_bottom + SECTION_GAP, content_w, legend_lines * LINE_HEIGHT)
    caption = Rect(MARGIN, legend.y + legend.h + SECTION_GAP, content_w, caption_lines * LINE_HEIGHT)
    return SheetLayout(width=content_w + 2 * MARGIN, height=caption.y + caption.h + MARGIN,
                       header=header, tiles=tiles, labels=labels, legend=legend, caption=caption)
