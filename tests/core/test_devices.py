"""Device choice: auto claims a GPU no other stratum run holds (waiting, bounded, when all are held), else the CPU."""

from __future__ import annotations

import stat
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from stratum_core import devices
from stratum_core.devices import claim_device, require_torch_cuda
from stratum_core.errors import ConfigError, InfrastructureError


def _fake_torch(monkeypatch, *, cuda_build: bool, gpus: int) -> None:
    """Install a stand-in `torch` that reports a CPU-only or CUDA build with `gpus` usable devices."""
    fake = SimpleNamespace(
        __version__="2.0.0+cu121" if cuda_build else "2.0.0+cpu",
        version=SimpleNamespace(cuda="12.1" if cuda_build else None),
        cuda=SimpleNamespace(is_available=lambda: gpus > 0, device_count=lambda: gpus))
    monkeypatch.setitem(sys.modules, "torch", fake)


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


def test_auto_claims_a_gpu_the_driver_reports_when_torch_is_a_cpu_build(tmp_path, monkeypatch):
    _fake_torch(monkeypatch, cuda_build=False, gpus=0)
    monkeypatch.setattr(devices, "_driver_gpu_count", lambda: 2)
    claim = claim_device("auto", lock_dir=tmp_path)
    assert claim.device == "cuda:0"
    claim.release()


def test_torch_gpus_are_counted_before_the_driver_is_asked(monkeypatch):
    _fake_torch(monkeypatch, cuda_build=True, gpus=3)
    monkeypatch.setattr(devices, "_driver_gpu_count", lambda: 8)
    assert devices.cuda_device_count() == 3


def test_a_torch_pass_on_a_gpu_with_cpu_only_torch_gets_one_clear_message(monkeypatch):
    _fake_torch(monkeypatch, cuda_build=False, gpus=0)
    with pytest.raises(InfrastructureError,
                       match=r"torch has no CUDA: install a CUDA build of torch, or use --device cpu"):
        require_torch_cuda("cuda:0")


def test_a_cuda_build_that_cannot_reach_the_gpu_says_so(monkeypatch):
    _fake_torch(monkeypatch, cuda_build=True, gpus=0)
    with pytest.raises(InfrastructureError, match=r"CUDA build but cannot use CUDA"):
        require_torch_cuda("cuda:0")


def test_torch_passes_need_nothing_from_torch_on_the_cpu_or_a_gpu_it_sees(monkeypatch):
    _fake_torch(monkeypatch, cuda_build=False, gpus=0)
    require_torch_cuda("cpu")
    _fake_torch(monkeypatch, cuda_build=True, gpus=2)
    require_torch_cuda("cuda:1")


def test_an_explicit_gpu_claim_makes_auto_pick_another(tmp_path):
    explicit = claim_device("cuda:0", gpu_count=2, lock_dir=tmp_path)
    auto = claim_device("auto", gpu_count=2, lock_dir=tmp_path)
    assert (explicit.device, auto.device) == ("cuda:0", "cuda:1")
    auto.release()
    explicit.release()


def test_explicit_runs_share_a_gpu_and_auto_avoids_it_until_the_last_ends(tmp_path):
    first = claim_device("cuda", gpu_count=2, lock_dir=tmp_path)
    second = claim_device("cuda:0", gpu_count=2, lock_dir=tmp_path)
    assert (first.device, second.device) == ("cuda:0", "cuda:0")
    first.release()
    auto = claim_device("auto", gpu_count=2, lock_dir=tmp_path)
    assert auto.device == "cuda:1"
    auto.release()
    second.release()
    freed = claim_device("auto", gpu_count=2, lock_dir=tmp_path)
    assert freed.device == "cuda:0"
    freed.release()


def test_an_explicit_gpu_held_by_an_auto_run_is_still_used_with_a_warning(tmp_path, caplog):
    auto = claim_device("auto", gpu_count=1, lock_dir=tmp_path)
    with caplog.at_level("WARNING", logger="stratum.devices"):
        explicit = claim_device("cuda:0", gpu_count=1, lock_dir=tmp_path)
    assert explicit.device == "cuda:0"
    assert "another stratum run holds this GPU" in caplog.text
    explicit.release()
    auto.release()


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


def test_a_torch_pass_checks_torch_cuda_before_any_image_is_read():
    # The real (CPU-only) torch of this machine: a dinov3 run on cuda:0 stops at the requirements check.
    from stratum_core.passes.base import PassOptions
    from stratum_core.passes.dinov3 import DINOv3Pass

    with pytest.raises(InfrastructureError, match=r"--device cuda:0: torch has no CUDA"):
        DINOv3Pass(PassOptions(device="cuda:0")).check_requirements()


def test_an_onnx_pass_on_a_gpu_does_not_need_torch_cuda():
    from stratum_core.passes.base import PassOptions
    from stratum_core.passes.dwpose import DWPosePass

    DWPosePass(PassOptions(device="cuda:0")).check_requirements()


def test_auto_waits_for_a_gpu_to_free_instead_of_sharing_one(tmp_path, caplog):
    held = claim_device("auto", gpu_count=1, lock_dir=tmp_path)
    timer = threading.Timer(0.5, held.release)
    timer.start()
    with caplog.at_level("WARNING", logger="stratum.devices"):
        claim = claim_device("auto", gpu_count=1, lock_dir=tmp_path, wait_s=10)
    timer.join()
    assert claim.device == "cuda:0"
    assert "every GPU (1) is held by another stratum run; waiting up to 10 s" in caplog.text
    claim.release()


def test_auto_fails_clearly_when_every_gpu_stays_held(tmp_path):
    first = claim_device("auto", gpu_count=2, lock_dir=tmp_path)
    second = claim_device("auto", gpu_count=2, lock_dir=tmp_path)
    with pytest.raises(InfrastructureError, match=r"every GPU \(2\) is held by another stratum run .*waited 0 s"):
        claim_device("auto", gpu_count=2, lock_dir=tmp_path, wait_s=0.2)
    first.release()
    second.release()


def test_locks_are_keyed_by_gpu_uuid_so_reordered_views_agree(tmp_path):
    # Two runs see the same two GPUs in opposite CUDA orders (CUDA_VISIBLE_DEVICES=0,1 vs 1,0).
    first = claim_device("auto", gpu_count=2, lock_dir=tmp_path, ids=["GPU-aaa", "GPU-bbb"])
    second = claim_device("auto", gpu_count=2, lock_dir=tmp_path, ids=["GPU-aaa", "GPU-bbb"][::-1])
    # the second run's cuda:0 is GPU-bbb, which nobody holds: it gets it, not a double claim of GPU-aaa
    assert (first.device, second.device) == ("cuda:0", "cuda:0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stratum-gpu-GPU-aaa.lock", "stratum-gpu-GPU-bbb.lock"]
    first.release()
    second.release()


def test_lock_files_are_shared_by_every_user_outside_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "private-tmp"))
    monkeypatch.setattr(devices.tempfile, "tempdir", None)
    assert devices.default_lock_dir() == Path("/dev/shm/stratum-gpu-locks")
    lock_dir = tmp_path / "locks"
    claim = claim_device("auto", gpu_count=1, lock_dir=lock_dir, ids=["GPU-aaa"])
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o1777
    assert stat.S_IMODE((lock_dir / "stratum-gpu-GPU-aaa.lock").stat().st_mode) == 0o666
    claim.release()


def test_gpu_uuids_come_from_the_driver_in_bus_order_narrowed_by_cuda_visible_devices(tmp_path, monkeypatch):
    for bus, uuid in (("0000:41:00.0", "GPU-bbb"), ("0000:01:00.0", "GPU-aaa")):
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "information").write_text(f"Model: NVIDIA H200\nGPU UUID: \t {uuid}\nBus Location: {bus}\n")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices._driver_gpu_uuids(tmp_path) == ["GPU-aaa", "GPU-bbb"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert devices._driver_gpu_uuids(tmp_path) == ["GPU-bbb"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbb,GPU-aaa")
    assert devices._visible_uuids() == ["GPU-bbb", "GPU-aaa"]


def test_gpus_without_a_known_uuid_are_keyed_by_index(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "_torch_gpu_uuids", lambda: [])
    monkeypatch.setattr(devices, "_driver_gpu_uuids", lambda: ["GPU-aaa"])
    assert devices.gpu_ids(2) == ["GPU-aaa", "1"]
    monkeypatch.setattr(devices, "_driver_gpu_uuids", lambda: [])
    assert devices.gpu_ids(2) == ["0", "1"]
