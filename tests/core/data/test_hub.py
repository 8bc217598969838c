"""HubStream over a repo that `stratum publish` wrote to the loopback fake Hub."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from stratum_core.data import HubStreamError, StratumDataset
from tests.core.data.conftest import HUB_LAYERS, HUB_TOKEN, NO_CAPTION, NO_T5


def assert_same_samples(streamed: list[dict], local: StratumDataset) -> None:
    assert [s["image_id"] for s in streamed] == local.image_ids
    for index, got in enumerate(streamed):
        expected = local[index]
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, np.ndarray):
                assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
                assert got[key].tobytes() == value.tobytes(), (got["image_id"], key)
            else:
                assert got[key] == value, key


def test_the_repo_has_several_chunks_and_layers_of_different_chunk_sizes(published):
    manifest = json.loads(published.hub.files(published.repo)["manifest.json"])
    assert list(manifest["data"]["chunks"]) == ["00000-00004", "00005-00009", "00010-00011"]
    assert list(manifest["layers"]["pose"]["chunks"]) == ["00000-00003", "00004-00007", "00008-00011"]
    assert len(manifest["layers"]["seg"]["chunks"]) == 6  # split at 2.5 MB: two 1 MB images per tar
    assert all(path.count("/") == 2 for path in manifest["layers"]["pose"]["paths"].values())  # nested layout


def test_stream_gives_every_sample_equal_to_the_local_files_bit_for_bit(published):
    with published.stream() as stream:
        streamed = list(stream)
    assert_same_samples(streamed, StratumDataset(published.tree.root, layers=HUB_LAYERS))
    assert stream.left_out == {"missing t5": 2, "missing caption": 1}


def test_ids_that_need_escaping_come_back_as_true_ids(published):
    ids = [s["image_id"] for s in published.stream(layers="pose")]
    assert "a/v1.2" in ids and "b/100%" in ids and ids == published.tree.ids


def test_missing_none_keeps_images_lacking_a_layer(published):
    streamed = list(published.stream(missing="none"))
    assert_same_samples(streamed, StratumDataset(published.tree.root, layers=HUB_LAYERS, missing="none"))
    holes = {s["image_id"] for s in streamed if s["t5_hidden"] is None}
    assert holes == NO_T5 and {s["image_id"] for s in streamed if s["caption"] is None} == NO_CAPTION


def test_missing_error_names_the_image_and_layer(published):
    with pytest.raises(HubStreamError, match="a/img02 \\(position 2\\) has no t5"):
        list(published.stream(layers="t5", missing="error"))


def test_batches_hold_one_bucket_and_every_sample_once(published):
    ds = StratumDataset(published.tree.root, layers=HUB_LAYERS)
    seen = []
    for batch in published.stream().batches(2, tensors=False):
        assert len(set(batch["bucket"])) == 1 and batch["seg"].shape[0] == len(batch["image_id"])
        seen += batch["image_id"]
    assert sorted(seen) == sorted(ds.image_ids)


def test_a_stream_resumed_from_its_state_continues_exactly(published):
    whole = [s["image_id"] for s in published.stream()]
    first = published.stream()
    it = iter(first)
    head = [next(it)["image_id"] for _ in range(4)]
    state = first.state_dict()
    first.close()
    resumed = published.stream()
    resumed.load_state_dict(state)
    assert head + [s["image_id"] for s in resumed] == whole


def test_resumed_batches_lose_and_repeat_nothing(published):
    whole = sorted(s["image_id"] for s in published.stream())
    first = published.stream()
    it = first.batches(2, tensors=False)
    head = next(it)["image_id"]  # positions 0 and 3 (one bucket); 1 (another bucket) waits; 2 lacks t5
    state = first.state_dict()
    assert (state["position"], state["done"]) == (1, [2, 3])
    resumed = published.stream()
    resumed.load_state_dict(state)
    rest = [i for batch in resumed.batches(2, tensors=False) for i in batch["image_id"]]
    assert sorted(head + rest) == whole


def test_a_stream_started_late_downloads_no_earlier_chunk(published):
    before = len(published.hub.requests)
    samples = list(published.stream(start=10))
    assert [s["image_id"] for s in samples] == [i for i in published.tree.ids[10:] if i not in NO_T5 | NO_CAPTION]
    fetched = {p for _, m, p, _ in published.hub.requests[before:] if m == "GET" and "/resolve/" in p}
    manifest = json.loads(published.hub.files(published.repo)["manifest.json"])
    pose, data = manifest["layers"]["pose"]["paths"], manifest["data"]["paths"]
    early = (pose["00000-00003"], pose["00004-00007"], data["00000-00004"])
    assert not any(p.endswith(early) for p in fetched)
    assert any(p.endswith(pose["00008-00011"]) for p in fetched)


def test_read_chunks_are_deleted_from_disk(published, tmp_path):
    on_disk = []
    for _ in published.stream(layers="seg", tmp_dir=str(tmp_path)):
        on_disk.append(sum(name.endswith(".tar") for _, _, names in os.walk(tmp_path) for name in names))
    assert max(on_disk) <= 1  # the tar being read is already deleted; at most the next one is fetched
    assert [os.path.join(d, n) for d, _, names in os.walk(tmp_path) for n in names] == []
    assert os.listdir(tmp_path) == []


def test_a_missing_chunk_of_a_layer_is_reported_naming_the_file(own_published):
    seg = json.loads(own_published.hub.files(own_published.repo)["manifest.json"])["layers"]["seg"]
    gone = seg["paths"][list(seg["chunks"])[2]]
    own_published.hub.put_files(own_published.repo, {}, delete=(gone,))
    with pytest.raises(HubStreamError, match=f"{gone} is missing from me/damaged@.*manifest.json lists seg chunk"):
        list(own_published.stream())


def test_a_layer_the_repo_does_not_have_is_refused(published):
    with pytest.raises(HubStreamError, match="has no layer dinov3 \\(its manifest lists caption, pose, seg, t5\\)"):
        published.stream(layers="dinov3,pose")


def test_the_token_is_sent_and_never_logged(published, caplog, capsys):
    list(published.stream(layers="pose"))
    assert f"Bearer {HUB_TOKEN}" in published.hub.auth_headers
    out = capsys.readouterr()
    assert HUB_TOKEN not in caplog.text + out.out + out.err


def _pose_tar(published) -> tuple[str, bytes]:
    manifest = json.loads(published.hub.files(published.repo)["manifest.json"])
    path = manifest["layers"]["pose"]["paths"]["00004-00007"]
    return path, published.hub.files(published.repo)[path]


def test_a_corrupt_array_in_a_tar_fails_naming_the_tar_and_member(own_published):
    import tarfile
    from io import BytesIO

    from stratum_core.data import SampleError

    path, data = _pose_tar(own_published)
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        member = tar.getmembers()[0]
    damaged = bytearray(data)
    damaged[member.offset_data:member.offset_data + 16] = b"garbage garbage!"  # same size: the tar stays valid
    own_published.hub.put_files(own_published.repo, {path: bytes(damaged)})
    with pytest.raises(SampleError, match=f"{path}:{member.name}: not a readable npy file"):
        list(own_published.stream(layers="pose"))
    stream = own_published.stream(layers="pose", corrupt="skip")
    assert len(list(stream)) == len(own_published.tree.ids) - 1 and stream.left_out == {"corrupt": 1}


def test_without_chunk_indexes_escaped_keys_still_come_back_as_true_ids(own_published):
    files = own_published.hub.files(own_published.repo)
    own_published.hub.put_files(own_published.repo, {}, delete=tuple(p for p in files if p.endswith(".index.json")))
    assert [s["image_id"] for s in own_published.stream(layers="pose")] == own_published.tree.ids


def test_cache_dir_keeps_chunks_so_the_next_epoch_downloads_nothing(published, tmp_path):
    stream = published.stream(layers="pose", cache_dir=str(tmp_path))
    first = [s["image_id"] for s in stream]
    before = published.hub.count("GET", r"/resolve/.*\.tar$")
    assert [s["image_id"] for s in stream] == first  # a finished iteration starts the next epoch
    assert published.hub.count("GET", r"/resolve/.*\.tar$") == before


def test_member_names_parse_back_to_key_and_artifact():
    from stratum_core.artifacts import BY_NAME
    from stratum_core.publish.layout import escape_key, member_name, parse_member_name

    for image_id in ("a/v1.2", "b/100%", "x.y/z.w", "plain"):
        assert parse_member_name(member_name(image_id, BY_NAME["t5_mask"])) == (escape_key(image_id), "t5_mask")
    assert parse_member_name("a/b.npy") is None and parse_member_name("a/b") is None
