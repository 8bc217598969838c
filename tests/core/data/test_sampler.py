"""BucketBatchSampler and collate: single-bucket batches, ranks, epochs, resume, a DataLoader with workers."""

from __future__ import annotations

import numpy as np
import pytest

from stratum_core.data import BucketBatchSampler, StratumDataset, collate
from stratum_core.errors import ConfigError

# 30 indices over three buckets of 13, 10 and 7 images: every bucket ends in an incomplete batch of 4.
BUCKETS = ["1024x1024"] * 13 + ["832x1216"] * 10 + ["1216x832"] * 7


def batches(sampler) -> list[list[int]]:
    return [list(b) for b in sampler]


def test_every_batch_holds_one_bucket_and_all_indices_once():
    got = batches(BucketBatchSampler(BUCKETS, batch_size=4))
    assert all(len({BUCKETS[i] for i in b}) == 1 for b in got)
    assert sorted(i for b in got for i in b) == list(range(30))
    assert len(got) == 4 + 3 + 2


def test_batches_of_a_dataset_stack_through_collate(tree):
    ds = StratumDataset(tree.root, layers=("caption", "seg", "t5"))
    for indices in BucketBatchSampler(ds, batch_size=3, seed=1):
        batch = collate([ds[i] for i in indices])
        assert tuple(batch["seg"].shape) == (len(indices),) + ds[indices[0]]["seg"].shape
        assert batch["image_id"] == [ds.image_ids[i] for i in indices]
        assert batch["caption"] == [ds[i]["caption"] for i in indices]
        for row, i in enumerate(indices):
            assert batch["t5_hidden"][row].numpy().tobytes() == ds[i]["t5_hidden"].tobytes()


def test_collate_gives_torch_tensors_when_torch_is_installed_numpy_on_request(tree):
    torch = pytest.importorskip("torch")
    ds = StratumDataset(tree.root, layers=("pose",))
    samples = [ds[0], ds[3]]  # same bucket (every third image)
    as_torch = collate(samples)
    assert isinstance(as_torch["pose"], torch.Tensor) and as_torch["pose"].dtype == torch.float16
    assert as_torch["width"].tolist() == [samples[0]["width"], samples[1]["width"]]
    as_numpy = collate(samples, tensors=False)
    assert isinstance(as_numpy["pose"], np.ndarray) and as_numpy["pose"].shape == (2, 133, 3)


def test_collate_refuses_arrays_of_two_buckets(tree):
    ds = StratumDataset(tree.root, layers=("seg",))
    with pytest.raises(ValueError, match="different shapes.*BucketBatchSampler"):
        collate([ds[0], ds[1]], tensors=False)


def test_collate_keeps_none_values_as_lists(tree):
    ds = StratumDataset(tree.root, layers=("t5",), missing="none")
    holes = [i for i, image_id in enumerate(ds.image_ids) if image_id == "a/img02"]
    batch = collate([ds[holes[0]], ds[holes[0]]], tensors=False)
    assert batch["t5_hidden"] == [None, None]


def test_two_ranks_are_disjoint_and_together_cover_every_index_once():
    ranks = [batches(BucketBatchSampler(BUCKETS, 4, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    flat = [sorted(i for b in got for i in b) for got in ranks]
    assert not set(flat[0]) & set(flat[1])
    assert sorted(flat[0] + flat[1]) == list(range(30))
    assert [len(BucketBatchSampler(BUCKETS, 4, rank=r, world_size=2)) for r in (0, 1)] == [len(g) for g in ranks]


def test_drop_last_gives_every_rank_the_same_number_of_full_batches():
    ranks = [batches(BucketBatchSampler(BUCKETS, 4, drop_last=True, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3  # 3 + 2 + 1 full batches, trimmed to a multiple of 2
    assert all(len(b) == 4 for got in ranks for b in got)


def test_epochs_shuffle_differently_and_reproducibly():
    sampler = BucketBatchSampler(BUCKETS, 4, seed=7)
    first = batches(sampler)
    sampler.set_epoch(1)
    second = batches(sampler)
    again = BucketBatchSampler(BUCKETS, 4, seed=7)
    again.set_epoch(1)
    assert second != first and batches(again) == second
    assert batches(BucketBatchSampler(BUCKETS, 4, seed=8)) != first


def test_no_shuffle_keeps_dataset_order_within_buckets():
    got = batches(BucketBatchSampler(BUCKETS, 4, shuffle=False))
    assert got[0] == [0, 1, 2, 3] and got[4] == [23, 24, 25, 26]  # buckets in label order: 1024x1024, 1216x832, …
    assert [i for b in got for i in b] == sorted(range(30), key=lambda i: (BUCKETS[i], i))


def test_resume_from_state_dict_continues_exactly():
    full = BucketBatchSampler(BUCKETS, 4, seed=5, rank=1, world_size=2)
    full.set_epoch(2)
    expected = batches(full)
    first = BucketBatchSampler(BUCKETS, 4, seed=5, rank=1, world_size=2)
    first.set_epoch(2)
    it = iter(first)
    done = [next(it), next(it)]
    state = first.state_dict()
    resumed = BucketBatchSampler(BUCKETS, 4, seed=5, rank=1, world_size=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the training loop sets the epoch again: the resume point stays
    assert done + batches(resumed) == expected
    assert batches(resumed) == expected  # the epoch after the resume starts from the beginning


def test_state_dict_takes_the_batches_the_loop_consumed():
    sampler = BucketBatchSampler(BUCKETS, 4, seed=5)
    expected = batches(sampler)
    batches(sampler)  # a DataLoader may have fetched all of them ahead
    resumed = BucketBatchSampler(BUCKETS, 4, seed=5)
    resumed.load_state_dict(sampler.state_dict(consumed=3))
    assert batches(resumed) == expected[3:]


def test_a_state_saved_with_other_settings_is_refused():
    state = BucketBatchSampler(BUCKETS, 4, seed=5).state_dict()
    with pytest.raises(ConfigError, match="batch_size 4 \\(now 8\\)"):
        BucketBatchSampler(BUCKETS, 8, seed=5).load_state_dict(state)


def test_a_dataloader_with_two_workers_yields_the_same_batches(tree):
    torch = pytest.importorskip("torch")
    ds = StratumDataset(tree.root, layers=("pose", "seg"))
    sampler = BucketBatchSampler(ds, batch_size=2, seed=4)
    expected = [collate([ds[i] for i in b]) for b in sampler]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=2, collate_fn=collate)
    got = list(loader)
    assert [b["image_id"] for b in got] == [b["image_id"] for b in expected]
    for mine, theirs in zip(got, expected):
        assert torch.equal(mine["seg"], theirs["seg"]) and torch.equal(mine["pose"], theirs["pose"])
