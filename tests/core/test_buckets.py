"""Aspect buckets: assignment by closest ratio (first wins ties) and the cover crop geometry."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stratum_core.buckets import BUCKETS, Bucket, choose_bucket, cover_crop_box
from stratum_core.intake import decode
from stratum_testing.images import gradient, save_rgb


def test_buckets_are_the_seven_of_the_spec_in_order():
    assert [b.label for b in BUCKETS] == ["1024x1024", "832x1216", "1216x832", "768x1280", "1280x768",
                                          "704x1344", "1344x704"]
    assert all(b.width % 64 == 0 and b.height % 64 == 0 for b in BUCKETS)


@pytest.mark.parametrize("size, expected", [
    ((1000, 1000), "1024x1024"),
    ((600, 900), "832x1216"),
    ((900, 600), "1216x832"),
    ((1000, 2000), "704x1344"),
    ((1080, 1920), "768x1280"),
    ((2000, 1000), "1344x704"),
    ((1920, 1080), "1280x768"),
    ((600, 1000), "768x1280"),
    ((1000, 600), "1280x768"),
    ((1, 1), "1024x1024"),
    ((20000, 16), "1344x704"),
    ((16, 20000), "704x1344"),
])
def test_bucket_is_the_closest_aspect_ratio(size, expected):
    assert choose_bucket(*size).label == expected


@pytest.mark.parametrize("size, expected", [
    ((16, 13), "1024x1024"),  # exactly between 1:1 and 1216:832 (19:13)
    ((16, 19), "1024x1024"),  # exactly between 1:1 and 832:1216 (13:19)
    ((61, 95), "832x1216"),  # exactly between 832:1216 and 768:1280
])
def test_exact_ties_go_to_the_earlier_bucket(size, expected):
    assert choose_bucket(*size).label == expected


def test_non_positive_size_is_refused():
    with pytest.raises(ValueError):
        choose_bucket(0, 10)


def test_cover_crop_box_is_centred_with_the_bucket_aspect():
    left, top, right, bottom = cover_crop_box(512, 384, Bucket(1216, 832))
    assert (left, right) == (0, 512)
    assert top == pytest.approx(40 / 2.375) and bottom == pytest.approx(384 - 40 / 2.375)
    assert (right - left) / (bottom - top) == pytest.approx(1216 / 832)


def reference_crop(array: np.ndarray, bucket: Bucket) -> np.ndarray:
    """The slow way: resize the whole image to cover the bucket, then take the centre."""
    h, w = array.shape[:2]
    scale = max(bucket.width / w, bucket.height / h)
    cover_w, cover_h = round(w * scale), round(h * scale)
    covered = Image.fromarray(array).resize((cover_w, cover_h), Image.Resampling.LANCZOS)
    left, top = (cover_w - bucket.width) // 2, (cover_h - bucket.height) // 2
    return np.asarray(covered.crop((left, top, left + bucket.width, top + bucket.height)))


@pytest.mark.parametrize("size", [(512, 384), (2432, 1824), (384, 512), (300, 300)])
def test_crop_equals_resize_to_cover_then_centre_crop(tmp_path, size):
    array = gradient(*size, seed=3)
    decoded = decode(save_rgb(tmp_path / "g.png", array))
    expected = reference_crop(array, decoded.bucket)
    diff = np.abs(decoded.crop.astype(np.int16) - expected.astype(np.int16))
    assert decoded.crop.shape == expected.shape
    assert diff.mean() < 0.5
    assert diff.max() <= 3


@pytest.mark.parametrize("bucket", BUCKETS, ids=lambda b: b.label)
def test_output_has_the_exact_bucket_size(tmp_path, bucket):
    # An awkward source size near the bucket's aspect (not a clean multiple).
    w, h = bucket.width // 7 + 3, bucket.height // 7 + 1
    decoded = decode(save_rgb(tmp_path / "x.png", gradient(w, h)))
    assert decoded.bucket == bucket
    assert decoded.crop.shape == (bucket.height, bucket.width, 3)
    assert decoded.crop.dtype == np.uint8
    assert (decoded.width, decoded.height) == (w, h)


def test_cover_crop_box_never_leaves_the_source():
    for w in range(1, 300):
        for h in range(1, 300, 7):
            left, top, right, bottom = cover_crop_box(w, h, choose_bucket(w, h))
            assert 0 <= left < right <= w and 0 <= top < bottom <= h, (w, h)


def test_size_whose_float_box_went_negative_decodes(tmp_path):
    decoded = decode(save_rgb(tmp_path / "x.png", gradient(77, 48)))  # once "box offset can't be negative"
    assert decoded.crop.shape == (768, 1280, 3)


def test_parse_reads_a_bucket_label():
    assert Bucket.parse("832x1216") == Bucket(832, 1216)


@pytest.mark.parametrize("label", ["100x100", "1216x1216", "x", "832"])
def test_parse_refuses_a_size_that_is_not_one_of_the_seven(label):
    with pytest.raises(ValueError):
        Bucket.parse(label)
