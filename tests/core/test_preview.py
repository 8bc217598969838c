"""`stratum preview`: sheet layout, layer drawing (pose, seg, depth, normals, PCA), CLI and the HTML index."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stratum_core.artifacts import BY_NAME, SEG_CLASSES
from stratum_core.buckets import Bucket
from stratum_core.cli import main
from stratum_core.preview import sheet_png
from stratum_core.preview.command import write_previews
from stratum_core.preview.index import IndexEntry, render_index
from stratum_core.preview.layers import load_layers
from stratum_core.preview.layout import GAP, MARGIN, TILE_NAMES, sheet_layout, tile_size
from stratum_core.preview.palettes import BACKGROUND, SEG_PALETTE, TURBO_LUT, depth_to_rgb, normal_to_rgb
from stratum_core.preview.pca import pca_rgb
from stratum_core.preview.selection import select_image_ids, sheet_filenames
from stratum_core.preview.sheet import (EMPTY_TILE_COLOUR, _header_text, font, legend_entries, render_sheet,
                                        wrap_text)
from stratum_core.preview.skeleton import LEFT, draw_pose, keypoint_colour
from stratum_core.store import Store

LANDSCAPE = Bucket(1216, 832)
PORTRAIT = Bucket(832, 1216)
CROP_COLOUR = (200, 100, 50)
TORSO = SEG_CLASSES.index("Torso")
NOSE = 0
CHROMIUM = Path("/usr/bin/chromium")


def _pose(points: dict[int, tuple[float, float, float]]) -> np.ndarray:
    pose = np.zeros((133, 3), np.float16)
    for index, value in points.items():
        pose[index] = value
    return pose


def write_image(root: Path, image_id: str, bucket: Bucket, layers: set[str], caption: str = "A short caption.") -> None:
    """An image with known values: crop CROP_COLOUR, left half Torso (depth 0.5, normal +z), one nose keypoint."""
    store = Store(root)
    h, w = bucket.height, bucket.width
    store.write(image_id, BY_NAME["metadata"], {"image_id": image_id, "source_path": f"{image_id}.png",
                                                "width": w, "height": h, "aspect_bucket": bucket.label})
    foreground = np.zeros((h, w), bool)
    foreground[:, : w // 2] = True
    values = {
        "caption": lambda: caption,
        "pixel": lambda: np.broadcast_to(np.array(CROP_COLOUR, np.float16)[:, None, None] / 255,
                                         (3, h, w)).astype(np.float16),
        "pose": lambda: _pose({NOSE: (-0.5, 0.0, 0.9)}),
        "seg": lambda: np.where(foreground, TORSO, 0).astype(np.uint8),
        "depth": lambda: np.where(foreground, 0.5, 0).astype(np.float16),
        "normal": lambda: (foreground[..., None] * np.array([0, 0, 1])).astype(np.float16),
        "dinov3_patches": lambda: np.random.default_rng(0).standard_normal(
            (h // 16 * (w // 16), 1024), dtype=np.float32).astype(np.float16),
    }
    for name in layers:
        store.write(image_id, BY_NAME[name], values[name]())


ALL_LAYERS = {"caption", "pixel", "pose", "seg", "depth", "normal", "dinov3_patches"}


def _pixel(image: Image.Image, rect, fx: float, fy: float) -> tuple[int, int, int]:
    return image.getpixel((rect.x + int(rect.w * fx), rect.y + int(rect.h * fy)))


# --- layout -------------------------------------------------------------------------------------


def test_layout_puts_six_bucket_shaped_tiles_in_three_columns():
    layout = sheet_layout(LANDSCAPE)
    tile_w, tile_h = tile_size(LANDSCAPE)
    assert (tile_w, tile_h) == (400, 274)
    assert list(layout.tiles) == list(TILE_NAMES)
    assert {(r.w, r.h) for r in layout.tiles.values()} == {(400, 274)}
    xs = sorted({r.x for r in layout.tiles.values()})
    ys = sorted({r.y for r in layout.tiles.values()})
    assert xs == [MARGIN, MARGIN + 400 + GAP, MARGIN + 2 * (400 + GAP)]
    assert len(ys) == 2 and ys[1] - ys[0] >= 274 + GAP
    assert layout.width == 3 * 400 + 2 * GAP + 2 * MARGIN


def test_layout_tiles_do_not_overlap_and_stay_inside_the_sheet():
    layout = sheet_layout(PORTRAIT, legend_lines=2, caption_lines=3)
    rects = list(layout.tiles.values()) + list(layout.labels.values()) + [layout.legend, layout.caption]
    for i, a in enumerate(rects):
        assert 0 <= a.x and a.x + a.w <= layout.width and 0 <= a.y and a.y + a.h <= layout.height
        for b in rects[i + 1:]:
            assert a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y


def test_layout_grows_by_one_line_height_per_legend_or_caption_line():
    base = sheet_layout(PORTRAIT, legend_lines=1, caption_lines=1)
    taller = sheet_layout(PORTRAIT, legend_lines=2, caption_lines=4)
    assert taller.height - base.height == 4 * (base.caption.h)
    assert taller.width == base.width
    assert taller.caption.y > taller.legend.y > max(r.y + r.h for r in taller.tiles.values())


# --- colours --------------------------------------------------------------------------------------


def test_seg_palette_has_one_distinct_colour_per_class():
    assert SEG_PALETTE.shape == (len(SEG_CLASSES), 3) == (28, 3)
    assert len({tuple(c) for c in SEG_PALETTE}) == 28


def test_depth_colour_map_runs_from_blue_to_red_and_hides_background():
    depth = np.array([[0.0, 0.5, 1.0]], np.float16)
    rgb = depth_to_rgb(depth, foreground=np.array([[False, True, True]]))
    assert tuple(rgb[0, 0]) == BACKGROUND
    assert tuple(rgb[0, 1]) == tuple(TURBO_LUT[128])
    low, high = TURBO_LUT[10].astype(int), TURBO_LUT[245].astype(int)
    assert low[2] > low[0] and high[0] > high[2]


def test_normals_are_drawn_as_half_n_plus_one():
    normal = np.array([[[0, 0, 1], [1, 0, 0], [0, 0, 0]]], np.float16)
    rgb = normal_to_rgb(normal)
    assert tuple(rgb[0, 0]) == (128, 128, 255)
    assert tuple(rgb[0, 1]) == (255, 128, 128)
    assert tuple(rgb[0, 2]) == BACKGROUND


# --- pose -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1216, 832), (400, 274), (274, 400)])
def test_keypoint_is_drawn_at_the_pixel_of_its_normalised_coordinates(size):
    width, height = size
    image = draw_pose(Image.new("RGB", size, (0, 0, 0)), _pose({NOSE: (0.5, -0.25, 0.9)}))
    x, y = int((0.5 + 1) / 2 * width), int((-0.25 + 1) / 2 * height)
    assert image.getpixel((x, y)) == keypoint_colour(NOSE)
    assert image.getpixel((x + 25, y)) == (0, 0, 0)


def test_low_confidence_keypoints_are_hidden():
    image = draw_pose(Image.new("RGB", (400, 400)), _pose({NOSE: (0.0, 0.0, 0.2)}))
    assert image.getbbox() is None


def test_limb_is_drawn_only_between_two_confident_keypoints():
    shoulder, elbow = 5, 7  # a left-side limb
    both = draw_pose(Image.new("RGB", (400, 400)), _pose({shoulder: (-0.5, 0, 0.9), elbow: (0.5, 0, 0.9)}))
    one = draw_pose(Image.new("RGB", (400, 400)), _pose({shoulder: (-0.5, 0, 0.9), elbow: (0.5, 0, 0.1)}))
    assert both.getpixel((200, 200)) == LEFT
    assert one.getpixel((200, 200)) == (0, 0, 0)


# --- PCA ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bucket, grid", [(LANDSCAPE, (52, 76)), (PORTRAIT, (76, 52)), (Bucket(1344, 704), (44, 84))])
def test_pca_image_has_the_patch_grid_of_the_bucket(bucket, grid):
    rows, cols = grid
    patches = np.random.default_rng(1).standard_normal((rows * cols, 1024)).astype(np.float16)
    assert pca_rgb(patches, bucket).shape == (rows, cols, 3)


def test_pca_first_component_follows_tokens_varying_along_columns():
    rows, cols = LANDSCAPE.patch_grid
    direction = np.random.default_rng(2).standard_normal(1024)
    column = np.tile(np.arange(cols, dtype=np.float32), rows)  # row-major: index = r * cols + c
    tokens = np.outer(column, direction) + np.random.default_rng(3).standard_normal((rows * cols, 1024)) * 1e-3
    red = pca_rgb(tokens.astype(np.float16), LANDSCAPE)[..., 0].astype(int)
    steps = np.diff(red, axis=1)
    assert (steps >= 0).all() or (steps <= 0).all()
    assert abs(int(red[:, -1].mean()) - int(red[:, 0].mean())) > 200
    assert np.ptp(red, axis=0).max() <= 1  # constant down every column


def test_pca_first_component_follows_tokens_varying_along_rows():
    rows, cols = PORTRAIT.patch_grid
    direction = np.random.default_rng(4).standard_normal(1024)
    row = np.repeat(np.arange(rows, dtype=np.float32), cols)
    red = pca_rgb(np.outer(row, direction).astype(np.float16), PORTRAIT)[..., 0].astype(int)
    assert abs(int(red[-1].mean()) - int(red[0].mean())) > 200
    assert np.ptp(red, axis=1).max() <= 1  # constant along every row


def test_pca_rejects_tokens_of_another_bucket():
    with pytest.raises(ValueError, match="1216x832"):
        pca_rgb(np.zeros((64 * 64, 1024), np.float16), LANDSCAPE)


# --- text -------------------------------------------------------------------------------------------


def test_legend_lists_the_classes_present_in_palette_colours():
    seg = np.array([[0, 3, 21], [21, 21, 3]], np.uint8)
    entries = legend_entries(seg, 1000, font(14))
    assert [e.name for e in entries] == ["Background", "Hair", "Torso"]
    assert entries[2].colour == tuple(int(c) for c in SEG_PALETTE[21])
    assert {e.line for e in legend_entries(seg, 120, font(14))} == {0, 1, 2}


def test_wrapped_caption_lines_fit_the_width_and_keep_every_word():
    text = "a dense caption " * 40 + "averyveryveryverylongwordwithoutspaces" * 3
    lines = wrap_text(text, 300, font(14))
    assert all(font(14).getlength(line) <= 300 for line in lines)
    assert "".join(" ".join(lines).split()) == "".join(text.split())


# --- sheets ----------------------------------------------------------------------------------------


def test_sheet_with_all_layers_draws_every_tile_from_its_layer(tmp_path):
    write_image(tmp_path, "people/one", LANDSCAPE, ALL_LAYERS)
    sheet = render_sheet(load_layers(tmp_path, "people/one"))
    layout = sheet_layout(LANDSCAPE, legend_lines=1, caption_lines=1)
    assert sheet.size == (layout.width, layout.height) == (1256, 730)
    tiles = layout.tiles
    assert _pixel(sheet, tiles["image"], 0.5, 0.5) == CROP_COLOUR
    nose_x, nose_y = tiles["pose"].x + tiles["pose"].w * 0.25, tiles["pose"].y + tiles["pose"].h * 0.5
    assert sheet.getpixel((int(nose_x), int(nose_y))) == keypoint_colour(NOSE)
    assert _pixel(sheet, tiles["seg"], 0.25, 0.5) == tuple(int(c) for c in SEG_PALETTE[TORSO])
    assert _pixel(sheet, tiles["seg"], 0.75, 0.5) == tuple(int(c) for c in SEG_PALETTE[0])
    assert _pixel(sheet, tiles["depth"], 0.25, 0.5) == tuple(int(c) for c in TURBO_LUT[128])
    assert _pixel(sheet, tiles["depth"], 0.75, 0.5) == BACKGROUND
    assert _pixel(sheet, tiles["normal"], 0.25, 0.5) == (128, 128, 255)
    assert _pixel(sheet, tiles["dinov3"], 0.5, 0.5) != EMPTY_TILE_COLOUR


def test_sheet_with_some_layers_shows_missing_layers_as_empty_tiles(tmp_path):
    write_image(tmp_path, "partial", PORTRAIT, {"seg", "pose"})
    Store(tmp_path).record_failure("partial", "depth", "model_error", "boom")
    layers = load_layers(tmp_path, "partial")
    sheet = render_sheet(layers)
    layout = sheet_layout(PORTRAIT, legend_lines=1, caption_lines=1)
    assert sheet.size == (layout.width, layout.height)
    for name in ("image", "depth", "normal", "dinov3"):
        assert _pixel(sheet, layout.tiles[name], 0.1, 0.1) == EMPTY_TILE_COLOUR, name
    assert _pixel(sheet, layout.tiles["seg"], 0.25, 0.5) == tuple(int(c) for c in SEG_PALETTE[TORSO])
    assert _pixel(sheet, layout.tiles["pose"], 0.1, 0.1) == BACKGROUND  # skeleton on a blank tile
    assert layers.notes["depth"] == "depth failed: model_error"
    assert layers.notes["normal"] == "not computed"
    assert layers.caption is None


def test_an_undecodable_image_shows_its_failure_instead_of_a_bucket(tmp_path):
    Store(tmp_path).record_failure("broken", "metadata", "decode_error", "cannot identify image file")
    layers = load_layers(tmp_path, "broken")
    assert not layers.bucket_known
    assert layers.notes["metadata"] == "metadata failed: decode_error"
    assert _header_text(layers) == ("broken", "no bucket · metadata failed: decode_error")


def test_crop_is_remade_from_the_source_image_when_pixel_is_absent(tmp_path):
    dataset, source = tmp_path / "out", tmp_path / "in"
    write_image(dataset, "shots/a", LANDSCAPE, {"seg"})
    (source / "shots").mkdir(parents=True)
    Image.new("RGB", (2432, 1664), CROP_COLOUR).save(source / "shots" / "a.png")
    assert load_layers(dataset, "shots/a").notes["crop"] == "no pixel.npy and no --source"
    crop = load_layers(dataset, "shots/a", source).crop
    assert crop.shape == (832, 1216, 3)
    assert tuple(crop[400, 600]) == CROP_COLOUR


def test_sheet_png_is_scaled_down_to_max_width(tmp_path):
    write_image(tmp_path, "a", LANDSCAPE, ALL_LAYERS)
    small = Image.open(io.BytesIO(sheet_png(tmp_path, "a", max_width=628)))
    full = Image.open(io.BytesIO(sheet_png(tmp_path, "a", max_width=5000)))
    assert small.format == "PNG" and small.width == 628
    assert full.size == (1256, 730)
    assert abs(small.height - full.height / 2) <= 1


# --- selection and files --------------------------------------------------------------------------


def test_sheet_filenames_are_flat_safe_and_distinct():
    names = sheet_filenames(["a/b", "a__b", "A/B", "x y/z?", "index"])
    assert names["a/b"] == "a__b.png"
    assert names["x y/z?"] == "x_y__z.png"
    assert len({n.lower() for n in names.values()}) == 5
    assert all("/" not in n and re.fullmatch(r"[A-Za-z0-9._-]+\.png", n) for n in names.values())
    assert names["index"] != "index.png"


def test_sample_is_seeded_sorted_and_drawn_from_the_dataset(tmp_path):
    for i in range(10):
        write_image(tmp_path, f"img{i:02d}", LANDSCAPE, set())
    first = select_image_ids(tmp_path, [], 3, seed=7)
    assert first == select_image_ids(tmp_path, [], 3, seed=7) == sorted(first)
    assert len(first) == 3 and set(first) <= {f"img{i:02d}" for i in range(10)}
    assert len(select_image_ids(tmp_path, [], 0, seed=7)) == 10
    assert select_image_ids(tmp_path, ["img03", "img01"], None, seed=7) == ["img03", "img01"]


def test_cli_writes_sheets_and_index_into_the_dataset_state_folder(tmp_path):
    write_image(tmp_path, "set/a", LANDSCAPE, ALL_LAYERS, caption="Knight <b> & \"dragon\"")
    write_image(tmp_path, "set/b", PORTRAIT, {"seg"})
    assert main(["preview", str(tmp_path), "set/a", "set/b"]) == 0
    out = tmp_path / ".stratum" / "preview"
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "set__a.png", "set__b.png"]
    page = (out / "index.html").read_text()
    assert "Knight &lt;b&gt; &amp; &quot;dragon&quot;" in page
    assert 'src="set__a.png"' in page and 'src="set__b.png"' in page


def test_cli_reports_unknown_images_and_exits_non_zero(tmp_path):
    write_image(tmp_path, "a", LANDSCAPE, {"seg"})
    assert main(["preview", str(tmp_path), "a", "nope", "--out", str(tmp_path / "pv")]) == 1
    assert (tmp_path / "pv" / "a.png").is_file() and not (tmp_path / "pv" / "nope.png").exists()


def test_index_links_are_relative_and_text_is_escaped():
    page = render_index([IndexEntry("dir/<x>", "dir__x.png", "<script>alert(1)</script>"),
                         IndexEntry("b", "b c.png", None)], "ds")
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert 'src="b%20c.png"' in page
    assert "file:" not in page and 'src="/' not in page


# --- browser ---------------------------------------------------------------------------------------


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               "--window-size=1200,900", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed (apt-get install -y chromium)")
def test_index_loads_in_headless_chromium_and_shows_every_sheet(tmp_path):
    dataset, out = tmp_path / "ds", tmp_path / "preview"
    write_image(dataset, "set/a", LANDSCAPE, ALL_LAYERS, caption="First <caption> & more.")
    write_image(dataset, "set/b", PORTRAIT, {"seg", "pose", "caption"})
    write_image(dataset, "c", Bucket(1024, 1024), {"depth"})
    result = write_previews(dataset, ["set/a", "set/b", "c"], out)
    url = result.index.resolve().as_uri()

    dom = _chromium(tmp_path, "--dump-dom", "--enable-logging=stderr", "--v=0", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not re.findall(r"CONSOLE.*", dom.stderr), "console messages on the page"
    images = re.findall(r'<img src="([^"]+)"', dom.stdout)
    assert sorted(images) == sorted(p.name for p in result.sheets.values())
    assert 'class="broken"' not in dom.stdout  # every <img> loaded (onerror marks the figure)

    screenshot = tmp_path / "index.png"
    shot = _chromium(tmp_path, f"--screenshot={screenshot}", url)
    assert shot.returncode == 0, shot.stderr[-2000:]
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (900, 1200)
    # The crop colour of set/a covers a whole tile, so a rendered sheet leaves a patch of it on screen.
    assert (np.abs(pixels - CROP_COLOUR).max(axis=-1) <= 6).sum() > 500
    saved = Path(__file__).resolve().parents[2] / ".pytest_cache" / "preview_index.png"
    saved.parent.mkdir(exist_ok=True)
    shutil.copyfile(screenshot, saved)



def _one_image_dataset(root: Path) -> Path:
    Store(root).write("a", BY_NAME["metadata"], {"image_id": "a", "source_path": "a.png", "width": 8, "height": 8,
                                                 "aspect_bucket": "1024x1024"})
    return root


def test_image_ids_may_follow_the_options(tmp_path):
    dataset = _one_image_dataset(tmp_path / "ds")
    assert main(["preview", str(dataset), "--out", str(tmp_path / "p"), "a"]) == 0
    assert "a.png" in (tmp_path / "p" / "index.html").read_text()


def test_an_unknown_option_after_the_ids_is_still_an_error(tmp_path):
    dataset = _one_image_dataset(tmp_path / "ds")
    with pytest.raises(SystemExit) as exit_info:
        main(["preview", str(dataset), "a", "--bogus"])
    assert exit_info.value.code == 2


def test_an_unexpected_error_on_one_image_is_logged_and_the_rest_are_drawn(tmp_path, monkeypatch, caplog):
    import stratum_core.preview.sheet as sheet

    for image_id in ("a", "b", "c"):
        write_image(tmp_path / "ds", image_id, LANDSCAPE, {"seg"})
    real_render = sheet.render_sheet

    def render_or_fail(layers):
        if layers.image_id == "b":
            raise KeyError("aspect_bucket")  # what a damaged metadata.json did before it was caught
        return real_render(layers)

    monkeypatch.setattr(sheet, "render_sheet", render_or_fail)
    out = tmp_path / "pv"
    assert main(["preview", str(tmp_path / "ds"), "a", "b", "c", "--out", str(out)]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png", "index.html"]
    page = (out / "index.html").read_text()
    assert 'src="a.png"' in page and 'src="c.png"' in page and 'src="b.png"' not in page
    assert any(r.levelname == "ERROR" and "b: no sheet: KeyError" in r.getMessage() for r in caplog.records)
