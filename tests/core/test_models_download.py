"""`stratum models download` fetches a pass's model from the Hub into DIR/<hub id>/ (fake Hub on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stratum_testing.hub import FakeHub


@pytest.fixture
def model_hub():
    with FakeHub() as hub:
        hub.put_files("yzd-v/DWPose", {"yolox_l.onnx": b"\x08\x07detector\0" + bytes(range(256)),
                                       "dw-ll_ucoco_384.onnx": b"\x08\x07pose\0" * 50,
                                       "README.md": b"not needed"}, kind="models")
        yield hub


def test_models_download_lays_files_out_as_dir_hub_id_file(tmp_path, model_hub):
    from stratum_core.passes import PassUnavailable, pass_class

    try:
        pass_class("pose")
    except PassUnavailable:
        pytest.skip("the pose pass is not in this build")
    env = {**os.environ, "HF_ENDPOINT": model_hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
           "HF_HOME": str(tmp_path / "hf_home")}
    env.pop("STRATUM_MODEL_DIR", None)
    done = download(env, "pose", tmp_path / "models")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "models" / "yzd-v" / "DWPose"
    files = model_hub.files("yzd-v/DWPose", kind="models")
    assert (folder / "yolox_l.onnx").read_bytes() == files["yolox_l.onnx"]
    assert (folder / "dw-ll_ucoco_384.onnx").read_bytes() == files["dw-ll_ucoco_384.onnx"]
    assert not (folder / "README.md").exists()  # only the files the pass needs
    assert "yzd-v/DWPose" in done.stdout


def download(env: dict, passes: str, to) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stratum_core", "models", "download", "--passes", passes,
                           "--to", str(to)], env=env, capture_output=True, text=True, timeout=120)


def test_a_model_the_hub_does_not_have_is_a_clear_error_not_a_traceback(tmp_path, model_hub):
    env = {**os.environ, "HF_ENDPOINT": model_hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
           "HF_HOME": str(tmp_path / "hf_home")}
    done = download(env, "seg", tmp_path / "models")
    assert done.returncode == 2
    assert "cannot download facebook/sapiens-seg-1b-torchscript" in done.stderr
    assert "Traceback" not in done.stderr
