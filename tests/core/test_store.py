"""The store: atomic writes, round trips, failure records, and refusing ids that escape the root."""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pytest

from stratum_core.artifacts import BY_NAME
from stratum_core.store import Store, is_temp_file, write_atomic


def test_npy_round_trip_keeps_dtype_and_values(tmp_path):
    store = Store(tmp_path)
    value = np.arange(12, dtype=np.float16).reshape(3, 4)
    path = store.write("a/b", BY_NAME["pixel"], value)
    assert path == tmp_path / "a" / "b" / "pixel.npy"
    back = store.read("a/b", BY_NAME["pixel"])
    assert back.dtype == np.float16 and np.array_equal(back, value)


def test_text_and_json_round_trip_utf8(tmp_path):
    store = Store(tmp_path)
    store.write("x", BY_NAME["caption"], "A café, ünïcode 画像.")
    store.write("x", BY_NAME["metadata"], {"image_id": "x", "source_path": "é/x.png"})
    assert store.read("x", BY_NAME["caption"]) == "A café, ünïcode 画像."
    assert store.read("x", BY_NAME["metadata"]) == {"image_id": "x", "source_path": "é/x.png"}


def test_write_leaves_no_temp_file(tmp_path):
    Store(tmp_path).write("a", BY_NAME["caption"], "text")
    assert os.listdir(tmp_path / "a") == ["caption.txt"]


def test_artifacts_get_the_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = Store(tmp_path).write("a", BY_NAME["caption"], "text")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch):
    target = tmp_path / "caption.txt"
    write_atomic(target, b"old")

    def broken_replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["caption.txt"]


def test_temp_names_are_hidden_and_recognised(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(os.path.basename(src)), real_replace(src, dst)))
    write_atomic(tmp_path / "pixel.npy", b"x")
    assert len(seen) == 1 and seen[0].startswith(".pixel.npy.") and is_temp_file(seen[0])


def test_failure_record_round_trip_and_clear(tmp_path):
    store = Store(tmp_path)
    store.record_failure("img", "pixel", "write_error", "disk full")
    record = store.read_failure("img", "pixel")
    assert (record["pass"], record["reason"], record["message"]) == ("pixel", "write_error", "disk full")
    store.clear_failure("img", "pixel")
    assert store.read_failure("img", "pixel") is None
    store.clear_failure("img", "pixel")  # clearing twice is fine


@pytest.mark.parametrize("image_id", ["../x", "a/../../x", "/abs", "", ".stratum/runs"])
def test_ids_that_escape_or_hit_the_state_dir_are_refused(tmp_path, image_id):
    with pytest.raises(ValueError, match="unsafe image id"):
        Store(tmp_path).image_dir(image_id)


def test_listing_of_a_missing_image_is_empty(tmp_path):
    assert Store(tmp_path).listing("nope") == set()


def test_write_atomic_without_replace_never_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "record.json"
    write_atomic(target, b"first", replace=False)
    with pytest.raises(FileExistsError):
        write_atomic(target, b"second", replace=False)
    assert target.read_bytes() == b"first"
    assert sorted(os.listdir(tmp_path)) == ["record.json"]


def test_write_atomic_without_replace_leaves_no_temp_file_when_the_write_fails(tmp_path):
    def half_then_disk_full(f):
        f.write(b"par")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(tmp_path / "record.json", half_then_disk_full, replace=False)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("array", [np.zeros((3, 4, 5), np.float16), np.arange(512, dtype=np.uint8),
                                   np.zeros((0, 1024), np.float16), np.ones((133, 3), np.float16)])
def test_npy_files_are_byte_for_byte_what_np_save_writes(tmp_path, array):
    from stratum_core.store import write_npy

    with open(tmp_path / "ours.npy", "wb") as f:
        write_npy(f, array)
    np.save(tmp_path / "numpy.npy", array)
    assert (tmp_path / "ours.npy").read_bytes() == (tmp_path / "numpy.npy").read_bytes()
