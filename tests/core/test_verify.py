"""`stratum verify`: every check of the artifact table, and `--fix` deleting what a re-run redoes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from stratum_core.artifacts import BY_NAME
from stratum_core.cli import main
from stratum_core.store import Store
from stratum_core.verify import STALE_TEMP_SECONDS, check_image, verify
from stratum_testing import images
from stratum_testing.cli import process_cli

BUCKET = (1024, 1024)  # H, W of the test image's bucket


def valid_values() -> dict[str, object]:
    h, w = BUCKET
    normal = np.zeros((h, w, 3), np.float16)
    normal[: h // 2, :, 2] = 1  # unit on the "foreground", zero elsewhere
    return {
        "caption": "A dry description.",
        "dinov3_cls": np.zeros(1024, np.float16),
        "dinov3_patches": np.zeros(((h // 16) * (w // 16), 1024), np.float16),
        "t5_hidden": np.zeros((512, 1024), np.float16),
        "t5_mask": np.concatenate([np.ones(10, np.uint8), np.zeros(502, np.uint8)]),
        "pose": np.zeros((133, 3), np.float16),
        "seg": np.full((h, w), 27, np.uint8),
        "depth": np.linspace(0, 1, h * w, dtype=np.float16).reshape(h, w),
        "normal": normal,
        "pixel": np.ones((3, h, w), np.float16),
    }


@pytest.fixture
def dataset(tmp_path):
    store = Store(tmp_path)
    store.write("img", BY_NAME["metadata"], {"image_id": "img", "source_path": "img.png", "width": 5,
                                             "height": 5, "aspect_bucket": "1024x1024"})
    for name, value in valid_values().items():
        store.write("img", BY_NAME[name], value)
    return tmp_path


def test_a_valid_dataset_verifies_clean(dataset):
    report = verify(dataset)
    assert report.ok and report.images == 1 and report.files == 11


def corrupt_npy(dataset, name, value):
    np.save(dataset / "img" / BY_NAME[name].filename, value, allow_pickle=False)


BAD_ARRAYS = {
    "wrong_dtype": ("pixel", lambda v: v["pixel"].astype(np.float32), "dtype float32 != float16"),
    "wrong_shape": ("pixel", lambda v: v["pixel"][:, :512], "shape (3, 512, 1024) != (3, 1024, 1024)"),
    "nan": ("dinov3_cls", lambda v: np.full(1024, np.nan, np.float16), "non-finite values"),
    "inf": ("depth", lambda v: np.full(BUCKET, np.inf, np.float16), "non-finite values"),
    "seg_above_27": ("seg", lambda v: np.full(BUCKET, 28, np.uint8), "class id 28 > 27"),
    "mask_not_binary": ("t5_mask", lambda v: np.full(512, 2, np.uint8), "values other than 0 and 1"),
    "depth_above_1": ("depth", lambda v: np.full(BUCKET, 1.5, np.float16), "values outside [0, 1]"),
    "depth_negative": ("depth", lambda v: np.full(BUCKET, -0.1, np.float16), "values outside [0, 1]"),
    "normal_not_unit": ("normal", lambda v: np.full(BUCKET + (3,), 0.3, np.float16), "vectors neither unit nor zero"),
    "pixel_above_1": ("pixel", lambda v: v["pixel"] * 2, "values outside [0, 1]"),
}


@pytest.mark.parametrize("case", BAD_ARRAYS, ids=list(BAD_ARRAYS))
def test_verify_catches_a_bad_array(dataset, case):
    name, make, message = BAD_ARRAYS[case]
    corrupt_npy(dataset, name, make(valid_values()))
    report = verify(dataset)
    assert [(p.image_id, p.filename) for p in report.problems] == [("img", BY_NAME[name].filename)]
    assert message in report.problems[0].message


@pytest.mark.parametrize("data", [b"not an npy at all", b"\x93NUMPY\x01\x00garbage", b""])
def test_verify_catches_an_unparsable_npy(dataset, data):
    (dataset / "img" / "seg.npy").write_bytes(data)
    (problem,) = verify(dataset).problems
    assert problem.filename == "seg.npy" and problem.message.startswith("cannot be read")


def test_verify_catches_a_truncated_npy(dataset):
    path = dataset / "img" / "pixel.npy"
    path.write_bytes(path.read_bytes()[:1000])
    (problem,) = verify(dataset).problems
    assert problem.filename == "pixel.npy" and problem.message.startswith("cannot be read")


def test_verify_catches_an_empty_caption(dataset):
    (dataset / "img" / "caption.txt").write_text("  \n")
    (problem,) = verify(dataset).problems
    assert (problem.filename, problem.message) == ("caption.txt", "empty text")


def test_verify_catches_metadata_missing_keys(dataset):
    (dataset / "img" / "metadata.json").write_text('{"image_id": "img"}')
    messages = [p.message for p in verify(dataset).problems]
    assert "no valid aspect_bucket (None is not one of the 7 buckets)" in messages
    assert any(m.startswith("missing keys") for m in messages)


def test_verify_catches_a_bucket_outside_the_seven(dataset):
    # A made-up bucket would let any array shape pass, so it is a problem in itself.
    metadata = json.loads((dataset / "img" / "metadata.json").read_text())
    (dataset / "img" / "metadata.json").write_text(json.dumps({**metadata, "aspect_bucket": "100x100"}))
    (problem,) = verify(dataset).problems
    assert (problem.filename, problem.message) == (
        "metadata.json", "no valid aspect_bucket ('100x100' is not one of the 7 buckets)")


def test_verify_catches_a_caption_of_two_paragraphs(dataset):
    (dataset / "img" / "caption.txt").write_text("A man stands.\n\nA dog sits.")
    (problem,) = verify(dataset).problems
    assert (problem.filename, problem.message) == ("caption.txt", "more than one paragraph")


def test_verify_reports_stale_temp_files(dataset):
    temp = dataset / "img" / ".pixel.npy.abc123.tmp"
    temp.write_bytes(b"partial")
    old = temp.stat().st_mtime - STALE_TEMP_SECONDS - 10
    os.utime(temp, (old, old))
    report = verify(dataset, fix=True)
    assert report.stale_temp_files == [temp]
    assert not temp.exists()


def test_verify_fix_deletes_only_bad_files(dataset):
    corrupt_npy(dataset, "seg", np.full(BUCKET, 99, np.uint8))
    report = verify(dataset, fix=True)
    assert report.fixed == 1
    assert not (dataset / "img" / "seg.npy").exists()
    assert (dataset / "img" / "depth.npy").exists()
    assert verify(dataset).ok


def test_verify_cli_exit_codes(dataset, capsys):
    assert main(["verify", str(dataset)]) == 0
    assert "OK" in capsys.readouterr().out
    corrupt_npy(dataset, "pose", np.zeros((133, 2), np.float16))
    assert main(["verify", str(dataset)]) == 1
    assert "img/pose.npy: shape (133, 2) != (133, 3)" in capsys.readouterr().out


def test_verify_fix_then_process_redoes_the_artifact(tmp_path, capsys):
    source = tmp_path / "in"
    images.write_gradient(source / "x.png", 40, 40)
    out = tmp_path / "out"
    process_cli(source, out, "--passes", "pixel", "--progress-every", "3600")
    good = np.load(out / "x" / "pixel.npy")
    np.save(out / "x" / "pixel.npy", good.astype(np.float32))
    assert main(["verify", str(out), "--fix"]) == 0
    assert not (out / "x" / "pixel.npy").exists()
    capsys.readouterr()
    process_cli(source, out, "--passes", "pixel", "--progress-every", "3600")
    assert "pixel     done 1, existing 0" in capsys.readouterr().out
    assert verify(out).ok
    assert np.array_equal(np.load(out / "x" / "pixel.npy"), good)


def test_artifacts_whose_metadata_is_gone_are_unfinished_not_broken(dataset, capsys):
    """Issue 12 defect 5: a re-run completes such a folder, so verify exits 0 and says so."""
    (dataset / "img" / "metadata.json").unlink()
    report = verify(dataset)
    assert report.ok and report.problems == []
    assert report.unfinished == ["img"]
    assert main(["verify", str(dataset)]) == 0
    assert "1 unfinished image folders" in capsys.readouterr().out


def test_a_damaged_artifact_without_metadata_is_still_broken(dataset):
    (dataset / "img" / "metadata.json").unlink()
    (dataset / "img" / "seg.npy").write_bytes(b"not an npy")
    report = verify(dataset)
    assert not report.ok and [p.filename for p in report.problems] == ["seg.npy"]


def test_check_image_of_one_pass_reads_only_its_artifacts_and_the_metadata(dataset, monkeypatch):
    # Each Dagster asset check verifies one pass: it must not read the other 20 MB of the image.
    import stratum_core.verify as verify_module

    read: list[str] = []
    real_read = verify_module.read_value

    def recording_read(store, image_id, artifact):
        read.append(artifact.filename)
        return real_read(store, image_id, artifact)

    monkeypatch.setattr(verify_module, "read_value", recording_read)
    (dataset / "img" / "seg.npy").write_bytes(b"broken")
    names = set(os.listdir(dataset / "img"))
    problems = check_image(Store(dataset), "img", names, only={"seg.npy"})
    assert sorted(read) == ["metadata.json", "seg.npy"]
    assert [p.filename for p in problems] == ["seg.npy"]
