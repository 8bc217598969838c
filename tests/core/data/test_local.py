"""StratumDataset over a local output tree: contents, missing layers, shards, corrupt files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from stratum_core.data import SampleError, StratumDataset
from stratum_core.errors import ConfigError
from stratum_core.shards import load_shard
from tests.core.data.conftest import IDS, NO_CAPTION, NO_T5

LAYERS = ("caption", "pose", "seg", "t5")


def test_sample_arrays_equal_the_files_bit_for_bit(tree):
    ds = StratumDataset(tree.root, layers=LAYERS)
    assert ds.image_ids == tree.complete(LAYERS)
    for index, image_id in enumerate(ds.image_ids):
        sample = ds[index]
        i = IDS.index(image_id)
        assert sample["image_id"] == image_id and sample["bucket"] == tree.bucket[image_id].label
        assert (sample["width"], sample["height"]) == (900 + i, 700 + i)
        assert sample["caption"] == f"caption {i}"
        for name in ("pose", "seg", "t5_hidden", "t5_mask"):
            on_disk = np.load(tree.path(image_id, name))
            assert sample[name].dtype == on_disk.dtype and sample[name].shape == on_disk.shape
            assert sample[name].tobytes() == on_disk.tobytes()


def test_a_sample_holds_exactly_the_requested_layers_artifacts(tree):
    sample = StratumDataset(tree.root, layers=("t5",))[0]
    assert set(sample) == {"image_id", "bucket", "width", "height", "t5_hidden", "t5_mask"}


def test_large_arrays_are_memory_mapped_small_ones_read(tree):
    sample = StratumDataset(tree.root, layers=LAYERS)[0]
    assert isinstance(sample["t5_hidden"], np.memmap) and isinstance(sample["seg"], np.memmap)
    assert not sample["t5_hidden"].flags.writeable
    assert not isinstance(sample["pose"], np.memmap)


def test_buckets_are_known_for_every_index(tree):
    ds = StratumDataset(tree.root, layers=("pose",))
    assert ds.buckets == [tree.bucket[i].label for i in ds.image_ids]
    assert len(set(ds.buckets)) == 3


def test_missing_skip_leaves_out_images_lacking_a_layer_and_counts_them(tree):
    ds = StratumDataset(tree.root, layers=("caption", "t5"), missing="skip")
    assert set(ds.image_ids) == set(tree.ids) - NO_T5 - NO_CAPTION
    assert ds.skipped == 3 and ds.left_out == {"missing t5": 2, "missing caption": 1}


def test_missing_error_refuses_and_names_an_image(tree):
    with pytest.raises(ConfigError, match=r"2 image\(s\).*a/img02 \(missing t5\)"):
        StratumDataset(tree.root, layers=("t5",), missing="error")


def test_missing_none_keeps_every_image_with_none_for_absent_keys(tree):
    ds = StratumDataset(tree.root, layers=("caption", "t5"), missing="none")
    assert ds.image_ids == tree.ids and ds.skipped == 0
    sample = ds[ds.image_ids.index("a/img02")]
    assert sample["t5_hidden"] is None and sample["t5_mask"] is None
    assert sample["caption"] == f"caption {IDS.index('a/img02')}"


def test_shards_select_exactly_their_images_without_walking_the_tree(tree, monkeypatch):
    import stratum_core.data.local as local

    def no_walk(root):
        raise AssertionError("walked the whole tree")

    monkeypatch.setattr(local, "iter_image_dirs", no_walk)
    ds = StratumDataset(tree.root, layers=("pose",), shards=["b-0001", "a-0000"])
    expected = load_shard(tree.root, "b-0001").image_ids + load_shard(tree.root, "a-0000").image_ids
    assert ds.image_ids == expected and len(expected) == 6


def test_shards_still_apply_the_missing_rule(tree):
    ds = StratumDataset(tree.root, layers=("t5",), shards=["a-0000"])
    assert ds.image_ids == [i for i in load_shard(tree.root, "a-0000").image_ids if i not in NO_T5]
    assert ds.left_out == {"missing t5": 1}


def test_an_unknown_shard_key_is_refused(tree):
    with pytest.raises(ConfigError, match="no shard 'zz-0009'"):
        StratumDataset(tree.root, layers=("pose",), shards=["zz-0009"])


def test_an_unknown_layer_is_refused(tree):
    with pytest.raises(ConfigError, match="unknown layer.*dinov4"):
        StratumDataset(tree.root, layers=("dinov4",))


def test_a_corrupt_npy_fails_that_sample_naming_the_file(own_tree):
    ds = StratumDataset(own_tree.root, layers=("t5",))
    bad = own_tree.path(ds.image_ids[1], "t5_hidden")
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(SampleError, match=str(bad)):
        ds[1]
    assert ds[0]["t5_hidden"].shape == (512, 1024)  # the others still read


def test_a_garbage_npy_header_fails_naming_the_file(own_tree):
    ds = StratumDataset(own_tree.root, layers=("pose",))
    bad = own_tree.path(ds.image_ids[0], "pose")
    bad.write_bytes(b"not an npy file at all" * 10)
    with pytest.raises(SampleError, match=f"{bad}: not a readable npy file"):
        ds[0]


def test_a_well_formed_npy_of_the_wrong_shape_or_dtype_is_refused(own_tree):
    ds = StratumDataset(own_tree.root, layers=("seg", "pose"))
    np.save(own_tree.path(ds.image_ids[0], "seg"), np.zeros((1216, 832), np.uint8))  # another bucket's shape
    np.save(own_tree.path(ds.image_ids[1], "pose"), np.zeros((133, 3), np.float32))
    with pytest.raises(SampleError, match=r"seg.npy: shape \(1216, 832\), the artifact table says \(1024, 1024\)"):
        ds[0]
    with pytest.raises(SampleError, match="pose.npy: dtype float32, the artifact table says float16"):
        ds[1]


def test_corrupt_skip_returns_none_for_that_sample_only(own_tree, caplog):
    ds = StratumDataset(own_tree.root, layers=("t5",), corrupt="skip")
    bad = own_tree.path(ds.image_ids[2], "t5_mask")
    bad.write_bytes(b"\x93NUMPY garbage")
    assert ds[2] is None
    assert str(bad) in caplog.text
    assert ds[3] is not None


def test_package_imports_and_reads_without_torch(tree):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from stratum_core.data import StratumDataset, BucketBatchSampler, collate\n"
            f"ds = StratumDataset({str(tree.root)!r}, layers=('pose',))\n"
            "batch = collate([ds[i] for i in next(iter(BucketBatchSampler(ds, 2)))], tensors=False)\n"
            "print(type(batch['pose']).__module__, batch['pose'].shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["numpy", "(2,", "133,", "3)"]


def test_images_come_in_the_order_publish_gives_them_positions(tmp_path):
    from stratum_core.publish.publisher import DatasetView
    from tests.core.data.conftest import write_tree

    # The walk visits folder "a" before "a-b"; sorted ids put "a-b/x" first ('-' sorts before '/').
    tree = write_tree(tmp_path / "out", tmp_path / "in", ids=("a/b", "a-b/x", "a/c"))
    ds = StratumDataset(tree.root, layers=("pose",))
    assert ds.image_ids == DatasetView.load(tree.root).ids == ["a-b/x", "a/b", "a/c"]
