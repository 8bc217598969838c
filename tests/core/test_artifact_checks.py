"""The artifact table's value checks: cheap bit-level checks with the verdicts of the plain float ones."""

from __future__ import annotations

import numpy as np
import pytest

from stratum_core.artifacts import BY_NAME, NORMAL_TOLERANCE, is_finite, validate_value
from stratum_core.buckets import Bucket

BUCKET = Bucket.parse("1024x1024")
HALF_SPECIALS = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, -np.nan, 65504, -65504,
                          6e-8, -6e-8, 6.1e-5, -6.1e-5, 0.5, np.nextafter(np.float16(1), np.float16(2))],
                         np.float16)


def every_half() -> np.ndarray:
    """All 65,536 float16 bit patterns (every NaN, inf, subnormal and -0.0 among them)."""
    return np.arange(2 ** 16, dtype=np.uint32).astype(np.uint16).view(np.float16)


def plain_in_unit_interval(a: np.ndarray) -> bool:
    """The reference: the float comparison the bit check replaces."""
    return bool(a.min() >= 0 and a.max() <= 1)


def plain_bad_normals(a: np.ndarray) -> int:
    norms = np.linalg.norm(a.astype(np.float32), axis=-1)
    return int(((norms > 0) & (np.abs(norms - 1) > NORMAL_TOLERANCE)).sum())


@pytest.mark.parametrize("value", HALF_SPECIALS, ids=[repr(float(v)) for v in HALF_SPECIALS])
def test_finiteness_of_one_half_matches_isfinite(value):
    a = np.full(7, value, np.float16)
    assert is_finite(a) == bool(np.isfinite(a).all())


def test_finiteness_matches_isfinite_for_every_half_among_finite_ones():
    finite = np.zeros(1000, np.float16)
    for value in every_half():
        finite[500] = value
        assert is_finite(finite) == bool(np.isfinite(value)), value


def test_unit_interval_matches_the_float_comparison_for_every_finite_half():
    check = BY_NAME["depth"].check  # the range check alone (validate_value adds dtype, shape, finiteness)
    depth = np.full(8, 0.5, np.float16)
    for value in every_half()[np.isfinite(every_half())]:
        depth[5] = value
        assert (check(depth) is None) == plain_in_unit_interval(depth), value


def test_negative_zero_is_inside_the_unit_interval():
    depth = np.zeros((1024, 1024), np.float16)
    depth[:10] = -0.0
    assert validate_value(BY_NAME["depth"], depth, BUCKET) is None


@pytest.mark.parametrize("value, message", [(np.nan, "non-finite values"), (-np.nan, "non-finite values"),
                                            (np.inf, "non-finite values"), (-np.inf, "non-finite values"),
                                            (1.001, "values outside [0, 1]"), (-6e-8, "values outside [0, 1]")])
def test_one_bad_depth_value_is_caught(value, message):
    depth = np.linspace(0, 1, 1024 * 1024, dtype=np.float16).reshape(1024, 1024)
    depth[512, 700] = value
    assert validate_value(BY_NAME["depth"], depth, BUCKET) == message


def test_one_nan_among_dinov3_patches_is_caught():
    patches = np.random.default_rng(0).standard_normal((4096, 1024)).astype(np.float16)
    assert validate_value(BY_NAME["dinov3_patches"], patches, BUCKET) is None
    patches[4095, 1023] = np.nan
    assert validate_value(BY_NAME["dinov3_patches"], patches, BUCKET) == "non-finite values"


def random_unit(n: int, scale: np.ndarray | float, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 3)).astype(np.float32)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    return (v * scale).astype(np.float16)


def test_normals_near_the_tolerance_get_the_float32_norm_verdict():
    rng = np.random.default_rng(1)
    n = 200_000
    # Norms spread across both edges of the tolerance band, where rounding decides.
    edge = rng.choice([1 - NORMAL_TOLERANCE, 1 + NORMAL_TOLERANCE], n)
    scale = (edge * (1 + rng.uniform(-2e-3, 2e-3, n)))[:, None]
    normals = random_unit(n, scale)
    expected = plain_bad_normals(normals)
    assert 0 < expected < n
    problem = validate_value(BY_NAME["normal"], normals.reshape(400, 500, 3), None)
    assert problem == f"{expected} vectors neither unit nor zero"


def test_zero_and_negative_zero_normals_are_background():
    normals = np.zeros((1024, 1024, 3), np.float16)
    normals[:300] = random_unit(300 * 1024, 1.0).reshape(300, 1024, 3)
    normals[300:310] = -0.0
    assert validate_value(BY_NAME["normal"], normals, BUCKET) is None


@pytest.mark.parametrize("vector, bad", [((0.3, 0.3, 0.3), True), ((0, 0, 6e-8), True), ((1, 0, 0), False),
                                         ((0, -1, 0), False), ((0.6, 0.8, 0), False), ((1.02, 0, 0), True),
                                         ((0, 0, 0.98), True)])
def test_one_normal_vector_among_unit_ones(vector, bad):
    normals = random_unit(1024 * 1024, 1.0).reshape(1024, 1024, 3)
    normals[1000, 5] = vector
    assert plain_bad_normals(normals) == int(bad)
    problem = validate_value(BY_NAME["normal"], normals, BUCKET)
    assert problem == ("1 vectors neither unit nor zero" if bad else None)


def test_subnormal_components_convert_exactly():
    # Tiny components are where a bit-level float16 → float32 conversion would go wrong.
    tiny = every_half()[1:1024]  # the positive subnormals
    normals = np.zeros((tiny.size, 3), np.float16)
    normals[:, 0] = 1
    normals[:, 1] = tiny
    normals[:, 2] = -tiny
    assert plain_bad_normals(normals) == 0
    assert validate_value(BY_NAME["normal"], normals, None) is None
    normals[:, 0] = 0
    assert validate_value(BY_NAME["normal"], normals, None) == f"{tiny.size} vectors neither unit nor zero"


@pytest.mark.parametrize("values, ok", [((0, 1), True), ((0, 0), True), ((1, 2), False), ((255,), False)])
def test_t5_mask_is_binary(values, ok):
    mask = np.zeros(512, np.uint8)
    mask[:len(values)] = values
    assert (validate_value(BY_NAME["t5_mask"], mask, None) is None) == ok


def test_pixel_of_every_uint8_value_is_in_the_unit_interval():
    from stratum_core.passes.pixel import crop_to_pixel

    crop = np.arange(3 * 1024 * 1024, dtype=np.uint32).astype(np.uint8).reshape(1024, 1024, 3)
    assert validate_value(BY_NAME["pixel"], crop_to_pixel(crop), BUCKET) is None
