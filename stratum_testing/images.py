"""Builders for sample source images: well-formed ones in every mode, and the bad inputs intake must survive."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112


def gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth (height, width, 3) uint8 RGB image: resampling methods agree closely on it."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 127.5 + 127.5 * np.sin((x + y + seed * 7) / max(width, height) * 3.0)
    return np.stack([r, g, b], axis=-1).round().clip(0, 255).astype(np.uint8)


def halves(width: int, height: int, left: tuple[int, ...], right: tuple[int, ...], mode: str = "RGB") -> Image.Image:
    """An image whose left half is one colour and right half another (for orientation checks)."""
    img = Image.new(mode, (width, height), left)
    img.paste(Image.new(mode, (width - width // 2, height), right), (width // 2, 0))
    return img


def save_rgb(path: Path, array: np.ndarray, **save_args) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, "RGB").save(path, **save_args)
    return path


def write_gradient(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A valid image whose format follows the suffix (.jpg → quality 95 JPEG)."""
    args = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    return save_rgb(path, gradient(width, height, seed), **args)


def write_sources(root: Path, sizes: Mapping[str, tuple[int, int]]) -> Path:
    """A source folder for a run: a gradient image per relative path → (width, height), the i-th drawn with
    seed i (format from the suffix). Returns `root`."""
    for seed, (rel_path, (width, height)) in enumerate(sizes.items()):
        write_gradient(root / rel_path, width, height, seed)
    return root


def numbered(count: int, size: tuple[int, int] = (64, 48), name: str = "{:03d}.png") -> dict[str, tuple[int, int]]:
    """`count` images of one size named by their index (000.png, 001.png, …): `write_sources`' argument."""
    return {name.format(i): size for i in range(count)}


# ---------------------------------------------------------------- hand-made PNG streams

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG from its parts; `idat` is the uncompressed scanline data (filter byte per row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(idat))
            + _chunk(b"IEND", b""))


def write_huge_header_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A few hundred bytes whose IHDR claims width×height RGB pixels (never allocated)."""
    path.write_bytes(png_bytes(width, height, 8, 2, b"\x00" * 64))
    return path


def write_rgb16_png(path: Path, width: int, height: int, value: tuple[int, int, int]) -> Path:
    """A solid 16-bit-per-channel RGB PNG (Pillow cannot write these itself)."""
    row = b"\x00" + struct.pack(">HHH", *value) * width
    path.write_bytes(png_bytes(width, height, 16, 2, row * height))
    return path


def write_grey16_png(path: Path, values: np.ndarray) -> Path:
    """A 16-bit greyscale PNG of `values` (uint16, (h, w))."""
    Image.fromarray(values.astype(np.uint16)).save(path, "PNG")
    return path


# ---------------------------------------------------------------- modes

def write_cmyk_jpeg(path: Path, size: tuple[int, int], cmyk: tuple[int, int, int, int]) -> Path:
    Image.new("CMYK", size, cmyk).save(path, "JPEG", quality=95)
    return path


def write_palette_png_with_transparency(path: Path, width: int, height: int) -> Path:
    """Left half palette index 0 (opaque red), right half index 1 (fully transparent green)."""
    img = Image.new("P", (width, height), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    img.paste(1, (width // 2, 0, width, height))
    img.save(path, "PNG", transparency=1)
    return path


def write_la_png(path: Path, size: tuple[int, int], la: tuple[int, int]) -> Path:
    Image.new("LA", size, la).save(path, "PNG")
    return path


def write_rgba_png(path: Path, size: tuple[int, int], rgba: tuple[int, int, int, int]) -> Path:
    Image.new("RGBA", size, rgba).save(path, "PNG")
    return path


def write_exif_rotated_jpeg(path: Path, width: int, height: int, orientation: int = 6) -> Path:
    """Stored width×height, left half red and right half blue, with an EXIF orientation tag.

    Orientation 6 means "rotate 90° clockwise to display": the viewer sees a
    height×width image whose top half is red and bottom half blue.
    """
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    halves(width, height, (255, 0, 0), (0, 0, 255)).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def write_solid(path: Path, size: tuple[int, int], rgb: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, rgb).save(path)
    return path


# ---------------------------------------------------------------- broken files

def write_zero_byte(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def write_truncated(path: Path, width: int = 256, height: int = 192) -> Path:
    """A valid JPEG or PNG (by suffix) cut to 40% of its bytes: the header parses, the pixels do not."""
    write_gradient(path, width, height)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.4)])
    return path


def write_text_named_png(path: Path) -> Path:
    path.write_text("this is not an image, only text with a .png name\n")
    return path


def bad_inputs(root: Path) -> dict[str, Path]:
    """Every awkward source of issue 2 under `root`, keyed by a short label."""
    root.mkdir(parents=True, exist_ok=True)
    return {
        "zero_byte": write_zero_byte(root / "zero.jpg"),
        "truncated_jpeg": write_truncated(root / "truncated.jpg"),
        "truncated_png": write_truncated(root / "truncated-png.png"),
        "text_png": write_text_named_png(root / "text.png"),
        "huge_header": write_huge_header_png(root / "huge.png"),
        "cmyk": write_cmyk_jpeg(root / "cmyk.jpg", (64, 48), (0, 255, 255, 0)),
        "grey16": write_grey16_png(root / "grey16.png", np.full((48, 64), 32896, np.uint16)),
        "rgb16": write_rgb16_png(root / "rgb16.png", 64, 48, (65535, 0, 0x8080)),
        "palette": write_palette_png_with_transparency(root / "palette.png", 64, 64),
        "la": write_la_png(root / "la.png", (64, 64), (0, 0)),
        "rgba": write_rgba_png(root / "rgba.png", (64, 64), (255, 0, 0, 128)),
        "exif_rotated": write_exif_rotated_jpeg(root / "rotated.jpg", 300, 200),
        "one_pixel": write_solid(root / "one.png", (1, 1), (10, 200, 30)),
        "strip": write_solid(root / "strip.png", (20000, 16), (90, 90, 90)),
        "unicode_space": write_gradient(root / "sub dir" / "café ünï 画像.jpg", 80, 60),
        "collision_jpg": write_gradient(root / "a.jpg", 40, 40),
        "collision_png": write_gradient(root / "a.png", 40, 40),
        "link_outside": write_link(root / "escape.png", write_gradient(root.parent / "outside.png", 40, 40)),
    }


def write_link(path: Path, target: Path) -> Path:
    """A symlink at `path` to `target` (here: a real image outside the input folder)."""
    path.symlink_to(target)
    return path
