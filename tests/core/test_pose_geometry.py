"""Tests of the model-free DWPose geometry: letterbox, YOLOX decode, NMS, crops, SimCC decode."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stratum_core import pose_geometry as geo


def _raw_row(cx: float, cy: float, w: float, h: float, stride: int, cell: tuple[int, int], obj: float,
             classes: dict[int, float]) -> np.ndarray:
    row = np.zeros(85, np.float32)
    row[:5] = (cx / stride - cell[0], cy / stride - cell[1], math.log(w / stride), math.log(h / stride), obj)
    for c, p in classes.items():
        row[5 + c] = p
    return row


def test_letterbox_pastes_top_left_on_114_and_keeps_raw_values():
    image = np.full((100, 200, 3), 7, np.uint8)
    image[..., 2] = 250
    out, ratio = geo.letterbox(image)
    assert out.shape == (3, 640, 640) and out.dtype == np.float32
    assert ratio == pytest.approx(3.2)
    assert out[0, 0, 0] == 7 and out[2, 319, 639] == 250  # resized region: 640 × 320, channel order kept
    assert (out[:, 320:, :] == 114).all()


def test_yolox_grid_runs_stride_by_stride_row_major():
    grid, strides = geo.yolox_grid()
    assert grid.shape == (8400, 2) and strides.shape == (8400, 1)
    assert geo.anchor_count() == 8400
    assert grid[1].tolist() == [1, 0] and grid[80].tolist() == [0, 1]  # 80 cells per row at stride 8
    assert strides[6399, 0] == 8 and strides[6400, 0] == 16 and strides[8000, 0] == 32
    assert grid[8399].tolist() == [19, 19]


def test_decode_yolox_gives_xyxy_and_objectness_times_class():
    raw = np.zeros((8400, 85), np.float32)
    index = 8000 + 3 * 20 + 9  # stride 32, cell (9, 3)
    raw[index] = _raw_row(296, 112, 64, 128, 32, (9, 3), 0.8, {0: 0.5, 3: 1.0})
    boxes, scores = geo.decode_yolox(raw)
    np.testing.assert_allclose(boxes[index], [264, 48, 328, 176], rtol=1e-5)
    assert scores[index, 0] == pytest.approx(0.4) and scores[index, 3] == pytest.approx(0.8)


def test_nms_drops_overlapping_weaker_box_and_keeps_separate_one():
    boxes = np.array([[0, 0, 100, 100], [5, 5, 105, 105], [200, 200, 300, 300]], np.float32)
    scores = np.array([0.9, 0.95, 0.5], np.float32)
    assert geo.nms(boxes, scores, 0.45) == [1, 2]


def test_person_boxes_ignore_other_classes_and_weak_scores_and_undo_the_ratio():
    raw = np.zeros((8400, 85), np.float32)
    raw[8000 + 3 * 20 + 9] = _raw_row(296, 112, 64, 128, 32, (9, 3), 0.9, {0: 1.0})  # person
    raw[8000 + 10 * 20 + 10] = _raw_row(330, 330, 300, 300, 32, (10, 10), 1.0, {2: 1.0})  # a car
    raw[8000 + 15 * 20 + 2] = _raw_row(80, 490, 40, 40, 32, (2, 15), 0.25, {0: 1.0})  # weak person
    boxes, scores = geo.person_boxes(raw, ratio=0.5)
    np.testing.assert_allclose(boxes, [[528, 96, 656, 352]], rtol=1e-5)
    np.testing.assert_allclose(scores, [0.9])


def test_largest_box_wins_by_area_and_none_when_empty():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 30, 5], [50, 50, 70, 70]], np.float32)
    assert geo.largest_box(boxes).tolist() == [50, 50, 70, 70]
    assert geo.largest_box(np.zeros((0, 4))) is None


def test_box_to_center_scale_pads_then_fixes_aspect_either_way():
    center, scale = geo.box_to_center_scale(np.array([100, 100, 200, 500]), 288, 384)  # tall
    assert center.tolist() == [150, 300]
    np.testing.assert_allclose(scale, [500 * 0.75, 500])
    _, scale = geo.box_to_center_scale(np.array([0, 0, 400, 100]), 288, 384)  # wide
    np.testing.assert_allclose(scale, [500, 500 / 0.75])


def test_crop_matrix_maps_the_scaled_region_onto_the_input_and_back():
    center, scale = np.array([150.0, 300.0]), np.array([375.0, 500.0])
    matrix = geo.crop_matrix(center, scale, 288, 384)
    corners = np.array([[150 - 187.5, 300 - 250, 1], [150 + 187.5, 300 + 250, 1]])
    np.testing.assert_allclose(corners @ matrix.T, [[0, 0], [288, 384]], atol=1e-9)
    crop_points = np.array([[0.0, 0.0], [144.0, 192.0], [288.0, 384.0]])
    np.testing.assert_allclose(geo.crop_to_image(crop_points, center, scale, 288, 384),
                               [[-37.5, 50], [150, 300], [337.5, 550]])


def test_crop_person_samples_the_right_pixels_and_normalises_rgb():
    image = np.zeros((400, 300, 3), np.uint8)
    image[:, :, 0] = np.arange(300, dtype=np.uint8)[None, :] // 2  # red encodes x
    image[:, :, 1] = 200
    center, scale = np.array([150.0, 200.0]), np.array([288.0, 384.0])  # 1:1 scale, offset (6, 8)
    out = geo.crop_person(image, center, scale, 288, 384)
    assert out.shape == (3, 384, 288) and out.dtype == np.float32
    assert out[0, 100, 50] == pytest.approx((28 - 123.675) / 58.395, rel=1e-5)  # x = 56 → 28
    assert out[1, 100, 50] == pytest.approx((200 - 116.28) / 57.12, rel=1e-5)


def test_decode_simcc_divides_by_split_ratio_and_scores_with_the_smaller_max():
    simcc_x = np.zeros((1, 2, 576), np.float32)
    simcc_y = np.zeros((1, 2, 768), np.float32)
    simcc_x[0, 0, 101], simcc_y[0, 0, 300] = 0.8, 0.6
    simcc_x[0, 1, 5] = 0.7  # y max is 0: an unusable keypoint
    locs, scores = geo.decode_simcc(simcc_x, simcc_y)
    np.testing.assert_allclose(locs[0, 0], [50.5, 150])
    assert scores[0, 0] == pytest.approx(0.6)
    np.testing.assert_allclose(locs[0, 1], [-0.5, -0.5])
    assert scores[0, 1] == 0


def test_to_unit_square_maps_corners_to_plus_minus_one():
    points = np.array([[0.0, 0.0], [1216.0, 832.0], [608.0, 416.0]])
    np.testing.assert_allclose(geo.to_unit_square(points, 1216, 832), [[-1, -1], [1, 1], [0, 0]])


def test_rgb_to_bgr_reverses_the_channels_for_the_detector():
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 0], image[..., 2] = 10, 200  # red 10, blue 200
    bgr = geo.rgb_to_bgr(image)
    assert bgr[0, 0].tolist() == [200, 0, 10] and bgr.flags["C_CONTIGUOUS"]


def test_box_to_center_scale_computes_in_float32_like_the_detector_boxes():
    center, scale = geo.box_to_center_scale(np.array([123.37, 245.91, 377.13, 688.29], np.float32), 288, 384)
    assert center.dtype == np.float32 and scale.dtype == np.float32
    box = np.array([123.37, 245.91, 377.13, 688.29], np.float32)
    assert center.tolist() == ((box[:2] + box[2:]) * np.float32(0.5)).tolist()


def reference_crop_matrix(center: np.ndarray, scale: np.ndarray, w: int, h: int) -> np.ndarray:
    """The reference's recipe (rot = 0), restated: float32 rows for the centre, the point half a box
    width above it, and the point a quarter turn from the centre around that one; then
    cv2.getAffineTransform on those float32 points."""
    import cv2

    def quarter_turn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return b + np.array([-(a - b)[1], (a - b)[0]], dtype=np.float32)

    src = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = center + np.array([0.0, scale[0] * -0.5])
    src[2] = quarter_turn(src[0], src[1])
    dst = np.zeros((3, 2), np.float32)
    dst[0] = [w * 0.5, h * 0.5]
    dst[1] = np.array([w * 0.5, h * 0.5]) + np.array([0.0, w * -0.5])
    dst[2] = quarter_turn(dst[0], dst[1])
    return cv2.getAffineTransform(src, dst)


def test_the_crop_is_bit_exact_with_the_reference_matrix_built_from_float32_points():
    import cv2

    center, scale = geo.box_to_center_scale(np.array([123.37, 245.91, 377.13, 688.29], np.float32), 288, 384)
    matrix = geo.crop_matrix(center, scale, 288, 384)
    reference = reference_crop_matrix(center, scale, 288, 384)
    assert np.array_equal(matrix, reference)
    # The analytic float64 matrix (what stratum used to build) is not the same in the last bits ...
    s = 288 / float(scale[0])
    analytic = np.array([[s, 0, 144 - s * float(center[0])], [0, s, 192 - s * float(center[1])]])
    assert not np.array_equal(matrix, analytic)
    image = np.random.default_rng(0).integers(0, 256, (832, 1216, 3), np.uint8)
    ours = cv2.warpAffine(image, matrix, (288, 384), flags=cv2.INTER_LINEAR)
    assert np.array_equal(ours, cv2.warpAffine(image, reference, (288, 384), flags=cv2.INTER_LINEAR))
    # ... and that difference moves pixels by a grey level: the reason to build it the reference way.
    assert (ours != cv2.warpAffine(image, analytic, (288, 384), flags=cv2.INTER_LINEAR)).any()
