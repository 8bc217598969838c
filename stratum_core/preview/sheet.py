"""Render one image's contact sheet: six layer tiles, the segmentation legend and the caption."""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stratum_core.artifacts import SEG_CLASSES
from stratum_core.preview.layers import ImageLayers, load_layers
from stratum_core.preview.layout import LINE_HEIGHT, SheetLayout, grid_width, sheet_layout, tile_size
from stratum_core.preview.palettes import BACKGROUND, SEG_PALETTE, depth_to_rgb, normal_to_rgb, seg_to_rgb
from stratum_core.preview.pca import pca_rgb
from stratum_core.preview.skeleton import DEFAULT_THRESHOLD, draw_pose

SHEET_COLOUR = (32, 33, 36)
EMPTY_TILE_COLOUR = (48, 50, 54)
EMPTY_TILE_OUTLINE = (95, 99, 104)
TEXT_COLOUR = (232, 234, 237)
MUTED_COLOUR = (154, 160, 166)
SWATCH = 12


@lru_cache(maxsize=None)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` pixels (no system fonts needed)."""
    return ImageFont.load_default(size=size)


def wrap_text(text: str, width: int, text_font: ImageFont.FreeTypeFont) -> list[str]:
    """Greedy word wrap so every line is at most `width` pixels; over-long words are split."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if text_font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while len(word) > 1 and text_font.getlength(word) > width:
            cut = _fitting_prefix(word, width, text_font)
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    return lines


def _fitting_prefix(word: str, width: int, text_font: ImageFont.FreeTypeFont) -> int:
    """Length of the longest prefix of `word` that fits in `width` pixels (at least 1)."""
    for length in range(len(word) - 1, 1, -1):
        if text_font.getlength(word[:length]) <= width:
            return length
    return 1


@dataclass(frozen=True)
class LegendEntry:
    """One seg class shown in the legend: its swatch colour and name, and where it goes."""

    colour: tuple[int, int, int]
    name: str
    line: int
    x: int


def legend_entries(seg: np.ndarray | None, width: int, text_font: ImageFont.FreeTypeFont) -> list[LegendEntry]:
    """The classes present in `seg`, flowed into lines of at most `width` pixels."""
    if seg is None:
        return []
    present = np.flatnonzero(np.bincount(seg.ravel(), minlength=len(SEG_CLASSES))[:len(SEG_CLASSES)])
    entries, line, x = [], 0, 0
    for class_id in present:
        name = SEG_CLASSES[class_id]
        entry_w = SWATCH + 5 + int(text_font.getlength(name)) + 16
        if x and x + entry_w > width:
            line, x = line + 1, 0
        entries.append(LegendEntry(tuple(int(c) for c in SEG_PALETTE[class_id]), name, line, x))
        x += entry_w
    return entries


def layer_tiles(layers: ImageLayers, size: tuple[int, int]) -> dict[str, Image.Image]:
    """Tile name → picture at `size` (width, height), for every layer that exists."""
    arrays = layers.arrays
    tiles: dict[str, Image.Image] = {}
    crop = Image.fromarray(layers.crop).resize(size, Image.Resampling.LANCZOS) if layers.crop is not None else None
    if crop is not None:
        tiles["image"] = crop
    if "pose" in arrays:
        base = crop if crop is not None else Image.new("RGB", size, BACKGROUND)
        tiles["pose"] = draw_pose(base, arrays["pose"], DEFAULT_THRESHOLD)
    seg = arrays.get("seg")
    if seg is not None:
        tiles["seg"] = Image.fromarray(seg_to_rgb(seg)).resize(size, Image.Resampling.NEAREST)
    if "depth" in arrays:
        # Depth is min-max scaled on the foreground, so 0 is also a foreground value: seg knows better.
        rgb = depth_to_rgb(arrays["depth"], seg > 0 if seg is not None else None)
        tiles["depth"] = Image.fromarray(rgb).resize(size, Image.Resampling.BOX)
    if "normal" in arrays:
        tiles["normal"] = Image.fromarray(normal_to_rgb(arrays["normal"])).resize(size, Image.Resampling.BOX)
    if "dinov3_patches" in arrays:
        grid = pca_rgb(arrays["dinov3_patches"], layers.bucket)
        tiles["dinov3"] = Image.fromarray(grid).resize(size, Image.Resampling.NEAREST)
    return tiles


# Tiles named differently from the artifact they show.
_LAYER_OF_TILE = {"dinov3": "dinov3_patches", "image": "crop"}


def tile_label(name: str, layers: ImageLayers) -> str:
    """The text above a tile: the layer's name and a fact worth seeing."""
    if name == "pose" and "pose" in layers.arrays:
        shown = int((layers.arrays["pose"][:, 2].astype(np.float32) >= DEFAULT_THRESHOLD).sum())
        return f"pose · {shown}/133 keypoints" if shown else "pose · no person"
    if _LAYER_OF_TILE.get(name, name) not in layers.arrays:
        return name
    if name == "dinov3":
        rows, cols = layers.bucket.patch_grid
        return f"dinov3 · PCA of {cols}x{rows} patches"
    if name == "depth":
        return "depth · 0 blue … 1 red"
    if name == "normal":
        return "normal · (n+1)/2 as RGB"
    return name


def _note_of(name: str, layers: ImageLayers) -> str:
    return layers.notes.get(_LAYER_OF_TILE.get(name, name), "missing")


def _draw_empty_tile(draw: ImageDraw.ImageDraw, rect, name: str, note: str) -> None:
    draw.rectangle([rect.x, rect.y, rect.x + rect.w - 1, rect.y + rect.h - 1], fill=EMPTY_TILE_COLOUR,
                   outline=EMPTY_TILE_OUTLINE)
    cx, cy = rect.x + rect.w / 2, rect.y + rect.h / 2
    draw.text((cx, cy - 10), name, fill=TEXT_COLOUR, font=font(20), anchor="mm")
    draw.text((cx, cy + 14), note, fill=MUTED_COLOUR, font=font(13), anchor="mm")


def _header_text(layers: ImageLayers) -> tuple[str, str]:
    meta = layers.metadata or {}
    size = f"source {meta['width']}x{meta['height']} · " if "width" in meta and "height" in meta else ""
    if not layers.bucket_known:  # never an invented bucket: say why there is none (e.g. the source failed to decode)
        return layers.image_id, f"no bucket · {layers.notes.get('metadata', 'metadata.json missing')}"
    return layers.image_id, f"{size}bucket {layers.bucket.label}"


def render_sheet(layers: ImageLayers) -> Image.Image:
    """The contact sheet of one image as an RGB image (width set by the bucket, about 880–1250 px)."""
    text_font = font(14)
    width = grid_width(layers.bucket)
    caption_lines = wrap_text(layers.caption, width, text_font) if layers.caption else []
    entries = legend_entries(layers.arrays.get("seg"), width, text_font)
    legend_lines = entries[-1].line + 1 if entries else 0
    layout = sheet_layout(layers.bucket, legend_lines, max(1, len(caption_lines)))
    sheet = Image.new("RGB", (layout.width, layout.height), SHEET_COLOUR)
    draw = ImageDraw.Draw(sheet)
    _draw_header(draw, layout, layers)
    tiles = layer_tiles(layers, tile_size(layers.bucket))
    for name, rect in layout.tiles.items():
        label = layout.labels[name]
        draw.text((label.x, label.y + label.h - 6), tile_label(name, layers), fill=MUTED_COLOUR, font=text_font,
                  anchor="ls")
        if name in tiles:
            sheet.paste(tiles[name], (rect.x, rect.y))
        else:
            _draw_empty_tile(draw, rect, name, _note_of(name, layers))
    _draw_legend(draw, layout, entries, text_font)
    _draw_caption(draw, layout, layers, caption_lines, text_font)
    return sheet


def _draw_header(draw: ImageDraw.ImageDraw, layout: SheetLayout, layers: ImageLayers) -> None:
    title, facts = _header_text(layers)
    header = layout.header
    draw.text((header.x, header.y + 20), title, fill=TEXT_COLOUR, font=font(20), anchor="ls")
    draw.text((header.x + header.w, header.y + 20), facts, fill=MUTED_COLOUR, font=font(14), anchor="rs")


def _draw_legend(draw: ImageDraw.ImageDraw, layout: SheetLayout, entries: list[LegendEntry],
                 text_font: ImageFont.FreeTypeFont) -> None:
    for entry in entries:
        x = layout.legend.x + entry.x
        y = layout.legend.y + entry.line * LINE_HEIGHT
        top = y + (LINE_HEIGHT - SWATCH) // 2
        draw.rectangle([x, top, x + SWATCH - 1, top + SWATCH - 1], fill=entry.colour, outline=EMPTY_TILE_OUTLINE)
        draw.text((x + SWATCH + 5, y + LINE_HEIGHT // 2), entry.name, fill=TEXT_COLOUR, font=text_font, anchor="lm")


def _draw_caption(draw: ImageDraw.ImageDraw, layout: SheetLayout, layers: ImageLayers, lines: list[str],
                  text_font: ImageFont.FreeTypeFont) -> None:
    box = layout.caption
    if not lines:
        note = layers.notes.get("caption", "missing")
        draw.text((box.x, box.y + LINE_HEIGHT // 2), f"caption: {note}", fill=MUTED_COLOUR, font=text_font,
                  anchor="lm")
        return
    for index, line in enumerate(lines):
        draw.text((box.x, box.y + index * LINE_HEIGHT + LINE_HEIGHT // 2), line, fill=TEXT_COLOUR, font=text_font,
                  anchor="lm")


def to_png(image: Image.Image, max_width: int | None = None) -> bytes:
    """PNG bytes of `image`, scaled down (never up) to `max_width` pixels wide when given."""
    if max_width is not None and image.width > max_width:
        height = max(1, round(image.height * max_width / image.width))
        image = image.resize((max_width, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def render_sheet_png(output_dir: Path, image_id: str, source_dir: Path | None, max_width: int | None) -> bytes:
    """Load, render and encode one image's sheet (what `stratum_core.preview.sheet_png` returns)."""
    return to_png(render_sheet(load_layers(output_dir, image_id, source_dir)), max_width)
