"""Device choice: auto claims a GPU no other stratum run holds, else the CPU."""

from __future__ import annotations

import pytest

from stratum_core import devices
from stratum_core.devices import claim_device
from stratum_core.errors import ConfigError


def test_auto_without_gpus_is_the_cpu(tmp_path):
    assert claim_device("auto", gpu_count=0, lock_dir=tmp_path).device == "cpu"


def test_auto_gives_concurrent_runs_different_gpus(tmp_path):
    first = claim_device("auto", gpu_count=2, lock_dir=tmp_path)
    second = claim_device("auto", gpu_count=2, lock_dir=tmp_path)
    assert (first.device, second.device) == ("cuda:0", "cuda:1")
    first.release()
    third = claim_device("auto", gpu_count=2, lock_dir=tmp_path)
    assert third.device == "cuda:0"
    second.release()
    third.release()


def test_an_explicit_gpu_that_is_not_there_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cuda:3"):
        claim_device("cuda:3", gpu_count=1, lock_dir=tmp_path)


def test_driver_count_respects_cuda_visible_devices(tmp_path, monkeypatch):
    for i in range(4):
        (tmp_path / f"0000:0{i}:00.0").mkdir()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices._driver_gpu_count(tmp_path) == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    assert devices._driver_gpu_count(tmp_path) == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices._driver_gpu_count(tmp_path) == 0
    assert devices._driver_gpu_count(tmp_path / "missing") == 0


@pytest.mark.parametrize("spec", ["cuda:abc", "cuda:-1", "gpu", "cuda:"])
def test_a_malformed_device_is_a_config_error(spec, tmp_path):
    with pytest.raises(ConfigError, match="--device"):
        claim_device(spec, gpu_count=1, lock_dir=tmp_path)


def test_a_lock_file_we_may_not_open_means_that_gpu_is_taken(tmp_path, monkeypatch):
    real_open = devices.os.open

    def refuse_gpu0(path, *args):
        if str(path).endswith("stratum-gpu-0.lock"):
            raise PermissionError("another user's file")
        return real_open(path, *args)

    monkeypatch.setattr(devices.os, "open", refuse_gpu0)
    claim = claim_device("auto", gpu_count=2, lock_dir=tmp_path)
    assert claim.device == "cuda:1"
    claim.release()
