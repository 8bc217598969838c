"""Tests of the pose pass against hand-built ONNX files whose outputs are known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stratum_core.buckets import Bucket
from stratum_core.discover import SourceImage
from stratum_core.errors import InfrastructureError
from stratum_core.intake import Decoded
from stratum_core.passes.base import Item, PassOptions
from stratum_core.passes.dwpose import DWPosePass, providers_for
from stratum_testing.cli import process_cli
from stratum_testing.dwpose_models import (
    DETECTOR_FILE,
    POSE_FILE,
    FakeBox,
    build_detector,
    build_dwpose_folder,
    build_pose_model,
    default_peaks,
)

SQUARE = Bucket(1024, 1024)
LANDSCAPE = Bucket(1216, 832)


def expected_pose(box: FakeBox, bucket: Bucket, peaks=None) -> np.ndarray:
    """The pose.npy a correct pass writes, worked out by hand from the reference's formulas."""
    x_bins, y_bins, x_peaks, y_peaks = peaks if peaks is not None else default_peaks()
    ratio = min(640 / bucket.height, 640 / bucket.width)
    x1, y1, x2, y2 = (v / ratio for v in (box.x1, box.y1, box.x2, box.y2))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = (x2 - x1) * 1.25, (y2 - y1) * 1.25
    sw, sh = (w, w / 0.75) if w > h * 0.75 else (h * 0.75, h)
    px = np.asarray(x_bins) / 2.0 / 288 * sw + cx - sw / 2
    py = np.asarray(y_bins) / 2.0 / 384 * sh + cy - sh / 2
    conf = np.minimum(x_peaks, y_peaks)
    return np.stack([2 * px / bucket.width - 1, 2 * py / bucket.height - 1, conf], axis=1)


def make_item(bucket: Bucket, name: str = "img", corner: int = 255, channel: int = 2) -> Item:
    """A flat grey crop whose top-left pixel has `corner` in RGB `channel` (blue by default: the
    detector's channel 0, since it is fed BGR, and what a `gate_on_corner` fake detector reads)."""
    crop = np.full((bucket.height, bucket.width, 3), 90, np.uint8)
    crop[0, 0, channel] = corner
    return Item(SourceImage(f"{name}.png", Path(f"/nowhere/{name}.png")),
                Decoded(crop, bucket.width, bucket.height, bucket))


def loaded_pass(folder: Path, **options) -> DWPosePass:
    p = DWPosePass(PassOptions(model_paths={"pose": folder}, offline=True, **options))
    p.check_requirements()
    p.load()
    return p


def run_one(folder: Path, bucket: Bucket) -> np.ndarray:
    outcome = loaded_pass(folder).run_batch([make_item(bucket)])[0]
    assert outcome.status == "ok"
    pose = outcome.values["pose"]
    assert pose.shape == (133, 3) and pose.dtype == np.float16
    return pose.astype(np.float64)


@pytest.mark.parametrize("bucket, box", [
    (SQUARE, FakeBox(200, 100, 392, 500, 0.9)),  # tall box: the crop is widened
    (LANDSCAPE, FakeBox(100, 150, 500, 300, 0.8)),  # wide box: the crop is heightened
], ids=["square", "landscape"])
def test_keypoints_are_the_expected_unit_coordinates_and_confidences(tmp_path, bucket, box):
    folder = build_dwpose_folder(tmp_path / "m", boxes=(box,))
    np.testing.assert_allclose(run_one(folder, bucket), expected_pose(box, bucket), atol=2e-3, rtol=1e-3)


def test_nms_drops_the_weaker_overlapping_box_and_other_classes_are_ignored(tmp_path):
    person = FakeBox(200, 100, 392, 500, 0.9)
    overlapping = FakeBox(190, 90, 400, 520, 0.6)  # larger, IoU > 0.45: must be suppressed, not chosen
    car = FakeBox(20, 20, 620, 620, 0.99, class_id=2)  # largest and strongest, but not a person
    folder = build_dwpose_folder(tmp_path / "m", boxes=(person, overlapping, car))
    np.testing.assert_allclose(run_one(folder, SQUARE), expected_pose(person, SQUARE), atol=2e-3, rtol=1e-3)


def test_of_two_people_the_larger_wins_even_with_a_lower_score(tmp_path):
    small = FakeBox(20, 20, 120, 220, 0.95)
    large = FakeBox(300, 50, 560, 600, 0.5)
    folder = build_dwpose_folder(tmp_path / "m", boxes=(small, large))
    np.testing.assert_allclose(run_one(folder, SQUARE), expected_pose(large, SQUARE), atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("boxes", [(), (FakeBox(200, 100, 392, 500, 0.25),)], ids=["nothing", "below-0.3"])
def test_no_person_gives_zeros_not_an_error(tmp_path, boxes):
    folder = build_dwpose_folder(tmp_path / "m", boxes=boxes)
    assert (run_one(folder, SQUARE) == 0).all()


def test_fixed_batch_of_one_still_processes_a_whole_batch(tmp_path):
    box = FakeBox(200, 100, 392, 500)
    folder = build_dwpose_folder(tmp_path / "m", boxes=(box,), batch=1)
    p = loaded_pass(folder)
    assert p.detector.model.fixed_batch == 1 and p.pose_model.model.fixed_batch == 1
    outcomes = p.run_batch([make_item(SQUARE, f"i{k}") for k in range(3)])
    for outcome in outcomes:
        np.testing.assert_allclose(outcome.values["pose"].astype(np.float64), expected_pose(box, SQUARE),
                                   atol=2e-3, rtol=1e-3)


def test_a_fixed_batch_of_four_pads_a_batch_of_three_and_keeps_each_result_with_its_image(tmp_path):
    box = FakeBox(100, 150, 500, 300)
    folder = build_dwpose_folder(tmp_path / "m", boxes=(box,), batch=4, gate_on_corner=True)
    p = loaded_pass(folder)
    assert p.detector.model.fixed_batch == 4 and p.pose_model.model.fixed_batch == 4
    # Mixed buckets give each person its own expected keypoints, so a shifted result would show;
    # the black corner leaves the pose model two people, padded to four as well.
    images = [(SQUARE, 255), (LANDSCAPE, 0), (LANDSCAPE, 255)]
    outcomes = p.run_batch([make_item(bucket, f"i{k}", corner) for k, (bucket, corner) in enumerate(images)])
    assert len(outcomes) == 3
    for (bucket, corner), outcome in zip(images, outcomes):
        pose = outcome.values["pose"].astype(np.float64)
        if corner:
            np.testing.assert_allclose(pose, expected_pose(box, bucket), atol=2e-3, rtol=1e-3)
        else:
            assert (pose == 0).all()


def test_a_dynamic_batch_keeps_each_result_with_its_image(tmp_path):
    box = FakeBox(200, 100, 392, 500)
    folder = build_dwpose_folder(tmp_path / "m", boxes=(box,), gate_on_corner=True)
    p = loaded_pass(folder, batch_size=4)
    corners = [255, 0, 255, 0, 0]  # a black corner silences the fake detector
    outcomes = p.run_batch([make_item(SQUARE, f"i{k}", c) for k, c in enumerate(corners)])
    for corner, outcome in zip(corners, outcomes):
        pose = outcome.values["pose"].astype(np.float64)
        if corner:
            np.testing.assert_allclose(pose, expected_pose(box, SQUARE), atol=2e-3, rtol=1e-3)
        else:
            assert (pose == 0).all()


def test_simcc_outputs_are_found_by_shape_not_by_order(tmp_path):
    box = FakeBox(200, 100, 392, 500)
    folder = tmp_path / "m"
    build_detector(folder / DETECTOR_FILE, (box,))
    build_pose_model(folder / POSE_FILE, swap_outputs=True)
    np.testing.assert_allclose(run_one(folder, SQUARE), expected_pose(box, SQUARE), atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("broken", [DETECTOR_FILE, POSE_FILE])
def test_a_file_that_is_not_onnx_is_an_error_naming_it(tmp_path, broken):
    folder = build_dwpose_folder(tmp_path / "m")
    (folder / broken).write_bytes(b"this is not a protobuf \x00\x01")
    with pytest.raises(InfrastructureError, match=broken):
        loaded_pass(folder)


def test_a_detector_with_the_wrong_output_shape_is_an_error_naming_it(tmp_path):
    folder = build_dwpose_folder(tmp_path / "m")
    build_detector(folder / DETECTOR_FILE, anchors=8000)
    with pytest.raises(InfrastructureError, match=f"{DETECTOR_FILE}.*8000"):
        loaded_pass(folder)


def test_a_pose_model_with_the_wrong_output_shape_is_an_error_naming_it(tmp_path):
    folder = build_dwpose_folder(tmp_path / "m")
    build_pose_model(folder / POSE_FILE, bins_x=500)
    with pytest.raises(InfrastructureError, match=POSE_FILE):
        loaded_pass(folder)


def test_cpu_device_uses_only_the_cpu_provider():
    assert providers_for("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_cuda_device_passes_its_index_to_the_cuda_provider():
    providers = providers_for("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers[0][1]["device_id"] == 1 and providers[1:] == ["CPUExecutionProvider"]


def test_the_cuda_provider_picks_convolutions_by_heuristic_and_grows_its_arena_only_as_needed():
    [(name, options), _cpu] = providers_for("cuda:0", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert name == "CUDAExecutionProvider"
    assert options == {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC",
                       "arena_extend_strategy": "kSameAsRequested"}


def test_cuda_asked_without_the_cuda_provider_is_a_clear_error():
    with pytest.raises(InfrastructureError, match="no CUDAExecutionProvider.*--device cpu"):
        providers_for("cuda:0", ["CPUExecutionProvider"])


def test_provenance_names_the_model_and_the_providers(tmp_path):
    p = loaded_pass(build_dwpose_folder(tmp_path / "m"))
    record = p.provenance()
    assert record["model"] == "yzd-v/DWPose" and record["providers"] == ["CPUExecutionProvider"]
    assert record["precision"] == "fp32"


def test_the_engine_writes_pose_for_each_image_of_a_landscape_run(tmp_path):
    from stratum_core.discover import discover
    from stratum_core.engine import RunConfig, run

    box = FakeBox(100, 150, 500, 300)
    folder = build_dwpose_folder(tmp_path / "m", boxes=(box,))
    images = tmp_path / "in"
    images.mkdir()
    for k in range(3):
        Image.fromarray(np.full((832, 1216, 3), 60 + k, np.uint8)).save(images / f"{k}.png")
    config = RunConfig(output_dir=tmp_path / "out", passes=("metadata", "pose"),
                       options=PassOptions(model_paths={"pose": folder}, offline=True, batch_size=2))
    summary = run(config, discover(images).images)
    assert summary.passes["pose"].done == 3 and summary.exit_code == 0
    for k in range(3):
        pose = np.load(tmp_path / "out" / str(k) / "pose.npy").astype(np.float64)
        np.testing.assert_allclose(pose, expected_pose(box, LANDSCAPE), atol=2e-3, rtol=1e-3)


def test_stratum_process_writes_pose_through_the_engine_and_verifies(tmp_path):
    from stratum_core.cli import main

    box = FakeBox(200, 100, 392, 500)
    folder = build_dwpose_folder(tmp_path / "m", boxes=(box,))
    images = tmp_path / "in"
    images.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((1024, 1024, 3), 120, np.uint8)).save(images / f"{name}.png")
    out = tmp_path / "out"
    code = process_cli(images, out, "--passes", "pose", "--device", "cpu",
                       "--model", f"pose={folder}")
    assert code == 0
    for name in ("a", "b"):
        pose = np.load(out / name / "pose.npy")
        assert pose.dtype == np.float16
        np.testing.assert_allclose(pose.astype(np.float64), expected_pose(box, SQUARE), atol=2e-3, rtol=1e-3)
    assert main(["verify", str(out)]) == 0


def corner_item(channel: int) -> Item:
    """A black crop with a bright 16×16 top-left block in RGB `channel` alone."""
    item = make_item(SQUARE, corner=0)
    crop = np.zeros_like(item.crop)
    crop[:16, :16, channel] = 255
    return Item(item.source, Decoded(crop, SQUARE.width, SQUARE.height, SQUARE))


@pytest.mark.parametrize("channel, person", [(2, True), (0, False)], ids=["blue-corner", "red-corner"])
def test_the_detector_is_fed_bgr(tmp_path, channel, person):
    """The gated fake detector reads channel 0 of its input's top-left pixel: with BGR input that is
    the image's blue, so only a blue corner lets it find the person."""
    folder = build_dwpose_folder(tmp_path / "m", gate_on_corner=True)
    pose = loaded_pass(folder).run_batch([corner_item(channel)])[0].values["pose"]
    assert (pose != 0).any() == person


def test_the_pose_model_is_fed_the_rgb_crop(tmp_path):
    p = loaded_pass(build_dwpose_folder(tmp_path / "m"))
    item = corner_item(0)  # red block
    prepared = p.preprocess(item)
    assert prepared.image is item.crop  # RGB, as mmpose's bgr_to_rgb=True model expects
    assert prepared.letterboxed[2, 0, 0] == 255 and prepared.letterboxed[0, 0, 0] == 0  # the detector's: BGR
