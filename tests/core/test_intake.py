"""Image intake: every awkward source is either decoded correctly or refused with its reason."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stratum_core.buckets import Bucket
from stratum_core.discover import discover
from stratum_core.engine import RunConfig, run
from stratum_core.errors import ItemError
from stratum_core.intake import decode
from stratum_core.passes.base import PassOptions
from stratum_core.progress import Progress
from stratum_testing import images
from stratum_testing.cli import process_cli


@pytest.fixture(scope="session")
def bad(tmp_path_factory) -> dict[str, Path]:
    return images.bad_inputs(tmp_path_factory.mktemp("bad") / "in")


@pytest.fixture(scope="session")
def bad_run(bad, tmp_path_factory):
    """One metadata+pixel run over the whole bad-input folder (shared by the run-level tests)."""
    work = tmp_path_factory.mktemp("bad-run")
    input_dir = bad["zero_byte"].parent
    before = {p: p.stat().st_mtime_ns for p in input_dir.rglob("*")}
    found = discover(input_dir)
    summary = run(RunConfig(output_dir=work / "out", passes=("metadata", "pixel"), workers=2,
                            options=PassOptions(batch_size=4)),
                  found.images, found.errors, Progress(len(found.images), every=3600))
    return summary, work, input_dir, before


def refused(path: Path) -> ItemError:
    with pytest.raises(ItemError) as info:
        decode(path)
    return info.value


@pytest.mark.parametrize("label", ["zero_byte", "truncated_jpeg", "truncated_png", "text_png"])
def test_undecodable_file_is_a_decode_error(bad, label):
    error = refused(bad[label])
    assert error.reason == "decode_error"
    assert error.message


def test_huge_header_is_refused_as_too_large_without_allocating(bad):
    assert bad["huge_header"].stat().st_size < 1000
    error = refused(bad["huge_header"])
    assert error.reason == "too_large"
    assert "10000000000" in error.message


def test_cmyk_jpeg_becomes_rgb(bad):
    decoded = decode(bad["cmyk"])
    assert decoded.crop.shape == (832, 1216, 3)
    assert np.abs(decoded.crop.astype(int) - (255, 0, 0)).max() <= 3


def test_16bit_grey_png_is_scaled_not_clipped(bad):
    crop = decode(bad["grey16"]).crop
    assert (crop == 128).all()  # 32896 = 128 × 257


def test_dark_16bit_png_is_still_scaled(tmp_path):
    crop = decode(images.write_grey16_png(tmp_path / "dark.png", np.full((8, 8), 200, np.uint16))).crop
    assert (crop == 1).all()  # 200 / 257 rounds to 1, not 200


def test_16bit_rgb_png_is_scaled(bad):
    crop = decode(bad["rgb16"]).crop
    assert np.abs(crop.astype(int) - (255, 0, 128)).max() <= 1


def test_palette_transparency_is_composited_on_white(bad):
    crop = decode(bad["palette"]).crop  # 1024x1024: left half opaque red, right half transparent
    assert (crop[:, :400] == (255, 0, 0)).all()
    assert (crop[:, 624:] == (255, 255, 255)).all()


def test_la_alpha_is_composited_on_white(bad):
    assert (decode(bad["la"]).crop == 255).all()  # black but fully transparent


def test_la_half_alpha_mixes_with_white(tmp_path):
    crop = decode(images.write_la_png(tmp_path / "la.png", (8, 8), (0, 128))).crop
    assert np.abs(crop.astype(int) - 127).max() <= 1


def test_rgba_alpha_is_composited_on_white(bad):
    crop = decode(bad["rgba"]).crop  # red at alpha 128 over white
    assert np.abs(crop.astype(int) - (255, 127, 127)).max() <= 1


def test_grey_colour_key_transparency_is_composited_on_white(tmp_path):
    path = tmp_path / "key.png"
    Image.new("L", (8, 8), 5).save(path, transparency=5)
    assert (decode(path).crop == 255).all()


def test_exif_rotation_chooses_bucket_from_rotated_size(bad):
    decoded = decode(bad["exif_rotated"])  # stored 300x200 landscape, displayed 200x300 portrait
    assert (decoded.width, decoded.height) == (200, 300)
    assert decoded.bucket == Bucket(832, 1216)


def test_exif_rotation_rotates_the_content(bad):
    crop = decode(bad["exif_rotated"]).crop.astype(int)  # displayed: top half red, bottom half blue
    assert np.abs(crop[:500].mean(axis=(0, 1)) - (255, 0, 0)).max() < 6
    assert np.abs(crop[-500:].mean(axis=(0, 1)) - (0, 0, 255)).max() < 6


def test_one_pixel_image_fills_the_bucket(bad):
    decoded = decode(bad["one_pixel"])
    assert decoded.bucket == Bucket(1024, 1024)
    assert (decoded.crop == (10, 200, 30)).all()


def test_strip_is_cropped_without_a_huge_intermediate(bad, monkeypatch):
    sizes = []
    real_resize = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    decoded = decode(bad["strip"])
    assert decoded.bucket == Bucket(1344, 704)
    assert (decoded.width, decoded.height) == (20000, 16)
    assert (decoded.crop == 90).all()
    # Covering 20000x16 at 1344x704 would be 880000x704 pixels; no resize may exceed the bucket.
    assert sizes and all(w * h <= 1344 * 704 for w, h in sizes)


def test_jpeg_draft_decode_matches_a_full_decode(tmp_path):
    array = images.gradient(3000, 2000, seed=1)
    decoded = decode(images.save_rgb(tmp_path / "big.jpg", array, quality=95))
    full = decode(images.save_rgb(tmp_path / "big.png", array))
    assert decoded.bucket == full.bucket
    assert np.abs(decoded.crop.astype(int) - full.crop.astype(int)).mean() < 2


# ---------------------------------------------------------------- the whole bad folder in one run

EXPECTED_FAILURES = {"zero": "decode_error", "truncated": "decode_error", "truncated-png": "decode_error",
                     "text": "decode_error", "huge": "too_large"}


def test_bad_inputs_fail_with_reasons_in_the_summary(bad_run):
    summary, *_ = bad_run
    failures = {f.image: f.reason for f in summary.failures}
    assert failures == EXPECTED_FAILURES
    assert {e.source: e.reason for e in summary.discovery_errors} == {"a.jpg": "id_collision",
                                                                      "a.png": "id_collision",
                                                                      "escape.png": "outside_input"}
    assert summary.exit_code == 1


def test_bad_inputs_leave_the_others_done(bad_run):
    summary, work, *_ = bad_run
    done = sorted(p.parent.relative_to(work / "out").as_posix() for p in (work / "out").rglob("pixel.npy"))
    assert done == ["cmyk", "grey16", "la", "one", "palette", "rgb16", "rgba", "rotated", "strip",
                    "sub dir/café ünï 画像"]
    assert summary.passes["pixel"].done == 10 and summary.passes["metadata"].done == 10


def test_undecodable_image_gets_no_metadata_but_a_failure_record(bad_run):
    _, work, *_ = bad_run
    assert sorted(os.listdir(work / "out" / "huge")) == [".failed-metadata.json"]


def test_colliding_sources_get_no_output(bad_run):
    _, work, *_ = bad_run
    assert not (work / "out" / "a").exists()


def test_nothing_is_written_outside_the_output(bad_run):
    _, work, input_dir, before = bad_run
    assert sorted(os.listdir(work)) == ["out"]
    assert {p: p.stat().st_mtime_ns for p in input_dir.rglob("*")} == before
    assert not (work / "out" / "escape").exists()


def test_image_list_lines_outside_the_input_are_refused_and_the_rest_done(bad, tmp_path, capsys):
    input_dir = bad["zero_byte"].parent
    outside = input_dir.parent / "outside.png"
    listing = tmp_path / "list.txt"
    listing.write_text(f"../outside.png\n{outside}\nescape.png\none.png\n", encoding="utf-8")
    before = outside.stat().st_mtime_ns
    out = tmp_path / "out"
    code = process_cli(input_dir, out, "--passes", "pixel", "--image-list", str(listing),
                       "--device", "cpu")
    report = capsys.readouterr().out
    assert code == 1
    assert "3 sources refused" in report
    for line in ("../outside.png", str(outside), "escape.png"):
        assert f"    {line}: outside_input:" in report
    assert sorted(os.listdir(out)) == [".stratum", "one"]
    assert sorted(os.listdir(tmp_path)) == ["list.txt", "out"]
    assert outside.stat().st_mtime_ns == before
