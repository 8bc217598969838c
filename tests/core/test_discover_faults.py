"""Sources that used to crash discovery or vanish: symlink loops, unreadable folders, FIFOs, devices,
dangling links, ids that are another image's artifact path, names that are not UTF-8 (issue 12)."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest

from stratum_core.cli import main
from stratum_core.discover import discover
from stratum_core.status import dataset_status
from stratum_core.store import Store
from stratum_core.artifacts import BY_NAME
from stratum_testing import images
from stratum_testing.cli import process_cli


def errors_by_source(found) -> dict[str, str]:
    return {e.source: e.reason for e in found.errors}


def rel_paths(found) -> list[str]:
    return [s.rel_path for s in found.images]


def test_a_symlink_to_itself_is_reported_and_the_rest_kept(tmp_path):
    images.write_gradient(tmp_path / "ok.png", 8, 8)
    (tmp_path / "self.png").symlink_to("self.png")
    found = discover(tmp_path)
    assert rel_paths(found) == ["ok.png"]
    assert errors_by_source(found) == {"self.png": "unreadable"}
    assert "symbolic links" in found.errors[0].message  # ELOOP's text


def test_two_links_pointing_at_each_other_are_both_reported(tmp_path):
    images.write_gradient(tmp_path / "sub" / "ok.png", 8, 8)
    (tmp_path / "sub" / "a.png").symlink_to("b.png")
    (tmp_path / "sub" / "b.png").symlink_to("a.png")
    (tmp_path / "loopdir").symlink_to("loopdir")  # a folder-looking loop is reported too
    found = discover(tmp_path)
    assert rel_paths(found) == ["sub/ok.png"]
    assert errors_by_source(found) == {"sub/a.png": "unreadable", "sub/b.png": "unreadable",
                                       "loopdir": "unreadable"}


def test_a_dangling_link_a_fifo_and_a_device_named_like_images_are_reported(tmp_path):
    images.write_gradient(tmp_path / "ok.png", 8, 8)
    (tmp_path / "gone.png").symlink_to("missing.png")
    (tmp_path / "gone.txt").symlink_to("missing.txt")  # not an image name: not a source, not reported
    os.mkfifo(tmp_path / "pipe.jpg")
    try:
        os.mknod(tmp_path / "device.png", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a character device needs root with CAP_MKNOD (CI runs as root)")
    found = discover(tmp_path)
    assert rel_paths(found) == ["ok.png"]
    assert errors_by_source(found) == {"gone.png": "not_found", "pipe.jpg": "not_a_file",
                                       "device.png": "not_a_file"}


def _scan_as_nobody(root: Path) -> tuple[list[str], dict[str, str]]:
    """discover(root) in a forked child running as an unprivileged user (root reads every folder)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, scan, report through the pipe
        try:
            os.setgid(65534)
            os.setuid(65534)
            found = discover(root)
            os.write(write_fd, json.dumps([rel_paths(found), errors_by_source(found)]).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    kept, errors = json.loads(data)
    return kept, errors


def test_an_unreadable_folder_is_reported_and_the_rest_kept():
    root = Path(tempfile.mkdtemp(prefix="stratum-eacces-"))  # world-traversable, unlike pytest's tmp_path
    try:
        os.chmod(root, 0o755)
        images.write_gradient(root / "ok.png", 8, 8)
        images.write_gradient(root / "locked" / "x.png", 8, 8)
        images.write_gradient(root / "open" / "y.png", 8, 8)
        for folder in (root / "open", root / "ok.png", root / "open" / "y.png"):
            os.chmod(folder, 0o755)
        os.chmod(root / "locked", 0o000)
        (root / "open" / "into-locked.png").symlink_to(root / "locked" / "x.png")  # stat gives EACCES
        if os.geteuid() == 0:
            kept, errors = _scan_as_nobody(root)
        else:
            found = discover(root)
            kept, errors = rel_paths(found), errors_by_source(found)
        assert kept == ["ok.png", "open/y.png"]
        assert errors == {"locked": "unreadable", "open/into-locked.png": "unreadable"}
    finally:
        os.chmod(root / "locked", 0o755)
        import shutil
        shutil.rmtree(root)


def test_an_id_that_is_another_images_artifact_path_is_refused(tmp_path):
    for rel in ("a.png", "a/pixel.npy.png", "a/metadata.json.png", "a/b.png", "pixel.npy/c.png"):
        images.write_gradient(tmp_path / rel, 8, 8)
    found = discover(tmp_path)
    assert rel_paths(found) == ["a.png", "a/b.png", "pixel.npy/c.png"]  # a top-level folder collides with nothing
    assert errors_by_source(found) == {"a/pixel.npy.png": "id_collision", "a/metadata.json.png": "id_collision"}
    assert "a/pixel.npy" in found.errors[0].message or "a/pixel.npy" in found.errors[1].message


def test_a_folder_is_never_counted_as_an_artifact(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "a" / "pixel.npy").mkdir(parents=True)
    store.write("a", BY_NAME["caption"], "A caption.")
    assert store.listing("a") == {"caption.txt"}


def test_a_name_that_is_not_utf8_is_refused_with_a_readable_reason(tmp_path):
    images.write_gradient(tmp_path / "ok.png", 8, 8)
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        f.write((tmp_path / "ok.png").read_bytes())
    os.mkdir(os.fsencode(tmp_path) + b"/d\xff")
    found = discover(tmp_path)
    assert rel_paths(found) == ["ok.png"]
    assert errors_by_source(found) == {"caf\\xe9.png": "bad_name", "d\\xff": "bad_name"}


def test_refused_sources_reach_summary_run_record_and_status_while_the_rest_is_processed(tmp_path, capsys):
    source = tmp_path / "in"
    images.write_gradient(source / "ok.png", 40, 30)
    (source / "self.png").symlink_to("self.png")
    os.mkfifo(source / "pipe.png")
    (source / "gone.png").symlink_to("nowhere.png")
    with open(os.fsencode(source) + b"/caf\xe9.png", "wb") as f:
        f.write((source / "ok.png").read_bytes())
    out = tmp_path / "out"
    code = process_cli(source, out, "--passes", "pixel", "--progress-every", "3600")
    printed = capsys.readouterr().out
    assert code == 1  # refused sources make the run exit non-zero, every good image is done
    assert sorted(n for n in os.listdir(out / "ok") if n != ".provenance.json") == ["metadata.json", "pixel.npy"]
    assert np.load(out / "ok" / "pixel.npy").shape == (3, 832, 1216)
    for line in ("self.png: unreadable", "pipe.png: not_a_file", "gone.png: not_found", "caf\\xe9.png: bad_name"):
        assert line in printed
    record = json.loads(next((out / ".stratum" / "runs").iterdir()).read_text())
    assert {e["source"]: e["reason"] for e in record["discovery_errors"]} == {
        "self.png": "unreadable", "pipe.png": "not_a_file", "gone.png": "not_found", "caf\\xe9.png": "bad_name"}
    status = dataset_status(out)
    assert status.total_images == 1
    assert {e["source"] for e in status.refused_sources} == {"self.png", "pipe.png", "gone.png", "caf\\xe9.png"}
    assert not [n for n in os.listdir(out) if n not in ("ok", ".stratum")]  # nothing written for refused ones


def test_shards_register_reports_a_symlink_loop_and_registers_the_rest(tmp_path, capsys, caplog):
    source = tmp_path / "in"
    images.write_gradient(source / "ffhq" / "0.png", 8, 8)
    (source / "ffhq" / "self.png").symlink_to("self.png")
    (source / "loop").symlink_to("loop")
    (source / "pipe.png").parent.mkdir(exist_ok=True)
    os.mkfifo(source / "pipe.png")
    code = main(["shards", "register", str(source), "-o", str(tmp_path / "out")])
    assert code == 1  # refused sources are reported, the run of registration still completes
    assert "ffhq-0000\t1 images" in capsys.readouterr().out
    for line in ("refused ffhq/self.png: unreadable", "refused loop: unreadable", "refused pipe.png: not_a_file"):
        assert line in caplog.text
