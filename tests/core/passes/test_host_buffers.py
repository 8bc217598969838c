"""The GPU lane's handoff: reused host buffers for device-to-host copies, value checks left to the writer."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stratum_core.discover import SourceImage  # noqa: E402
from stratum_core.engine import Engine, RunConfig  # noqa: E402
from stratum_core.passes.base import Item, PassOptions  # noqa: E402
from stratum_core.passes.dinov3 import DINOv3Pass  # noqa: E402
from stratum_core.passes.host_buffers import HostBuffers  # noqa: E402
from stratum_core.passes.metadata import MetadataPass  # noqa: E402
from stratum_testing import images  # noqa: E402


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_cpu_tensors_come_back_as_views_without_a_copy():
    t = torch.arange(12, dtype=torch.float16).reshape(3, 4)
    (a,) = HostBuffers("cpu").to_numpy(t)
    assert address(a) == t.data_ptr()


def test_a_copy_holds_the_tensor_values():
    t = torch.randn(2, 5, 7).to(torch.float16)
    (a,) = HostBuffers("cpu").copy(t[:, 1:])  # a strided source, as DINOv3's patch slice
    assert a.flags.c_contiguous and np.array_equal(a, t[:, 1:].numpy())


def test_a_copy_is_its_own_memory():
    t = torch.zeros(4, 8)
    (a,) = HostBuffers("cpu").copy(t)
    t += 1
    assert a.sum() == 0 and address(a) != t.data_ptr()


def test_crops_are_stacked_into_one_batch():
    crops = [np.full((4, 6, 3), i, np.uint8) for i in range(3)]
    for c in crops:
        c.flags.writeable = False  # decoded crops are read-only
    batch = HostBuffers("cpu").stack(crops)
    assert batch.shape == (3, 4, 6, 3) and batch.dtype == torch.uint8
    assert [int(batch[i].max()) for i in range(3)] == [0, 1, 2]


def test_dinov3_hands_the_crop_over_without_copying_it(tmp_path):
    from stratum_core.intake import decode

    path = images.write_gradient(tmp_path / "a.png", 32, 32)
    item = Item(SourceImage("a.png", path), decode(path))
    assert DINOv3Pass(PassOptions()).preprocess(item) is item.crop


@pytest.mark.gpu
def test_cuda_outputs_and_inputs_use_pinned_host_buffers():
    pool = HostBuffers("cuda")
    t = torch.randn(16, 4096, 1024, device="cuda").to(torch.float16)
    cls, patches = pool.to_numpy(t[:, 0], t)
    assert np.array_equal(patches, t.cpu().numpy()) and np.array_equal(cls, t[:, 0].cpu().numpy())
    assert torch.from_numpy(patches).is_pinned()
    batch = pool.stack([np.full((8, 8, 3), i, np.uint8) for i in range(4)])
    assert batch.is_pinned() and int(batch.to("cuda", non_blocking=True).sum()) == 8 * 8 * 3 * 6


class NaNDINOv3(DINOv3Pass):
    """The real DINOv3 postprocess on a model output whose one image went non-finite."""

    def load(self):
        self._registers = 4

    def _forward_same_size(self, crops):
        cls = np.zeros((len(crops), 1024), np.float16)
        patches = np.zeros((len(crops), 4096, 1024), np.float16)
        patches[0, 17, 3] = np.nan
        return cls, patches


def test_non_finite_dinov3_features_fail_the_image_in_the_writer_and_are_not_written(tmp_path):
    for name in ("a", "b"):
        images.write_gradient(tmp_path / "in" / f"{name}.png", 32, 32)
    sources = [SourceImage(f"{n}.png", tmp_path / "in" / f"{n}.png") for n in ("a", "b")]
    options = PassOptions()
    config = RunConfig(output_dir=tmp_path / "out", passes=("metadata", "dinov3"), workers=1,
                       options=PassOptions(batch_size=2))
    summary = Engine(config, [MetadataPass(options), NaNDINOv3(options)], preloaded=True).run(sources)
    assert [(f.image, f.pass_name, f.reason) for f in summary.failures] == [("a", "dinov3", "inference_error")]
    assert "dinov3_patches.npy: non-finite values" in summary.failures[0].message
    assert not (tmp_path / "out" / "a" / "dinov3_patches.npy").exists()
    assert (tmp_path / "out" / "b" / "dinov3_patches.npy").exists()
