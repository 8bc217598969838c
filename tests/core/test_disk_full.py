"""A full disk or a read-only output: a usage error before any work, or a clean early stop with the summary
printed and exit 2 (issue 12 defect 3). Real small filesystems (tmpfs) where the machine allows mounting."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import stratum_core.engine as engine_module
from stratum_core.summary import RunSummary
from stratum_core.verify import verify
from stratum_testing import images
from stratum_testing.cli import process_cli

STRATUM = str(Path(sys.executable).parent / "stratum")


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory) -> Path:
    return images.write_sources(tmp_path_factory.mktemp("full") / "in", images.numbered(12))


def mount_tmpfs(size: str, *options: str) -> Path:
    """A fresh tmpfs of `size`; skips (saying why) where this machine refuses mounts (CI runs as root)."""
    where = Path(tempfile.mkdtemp(prefix="stratum-tmpfs-"))
    opts = ",".join((f"size={size}", *options))
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if result.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); the patched-write tests cover this")
    return where


@pytest.fixture
def small_disk():
    where = mount_tmpfs("2m")
    yield where
    subprocess.run(["umount", str(where)], check=True)
    where.rmdir()


@pytest.fixture
def read_only_disk():
    where = mount_tmpfs("1m", "ro")
    yield where
    subprocess.run(["umount", str(where)], check=True)
    where.rmdir()


def process(input_dir: Path, output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([STRATUM, "process", str(input_dir), "-o", str(output), "--passes", "pixel",
                           "--progress-every", "3600", "--batch-size", "1", *extra],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_a_disk_that_fills_during_the_run_stops_it_with_the_summary_and_exit_2(input_dir, small_disk):
    output = small_disk / "out"
    result = process(input_dir, output)  # each 832x1216 pixel.npy is 6 MB: the first one does not fit
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "error: cannot write to" in result.stderr and "No space left on device" in result.stderr
    assert result.stderr.count("No space left on device") == 1  # said once
    assert result.stdout.startswith("12 images")  # the summary is printed
    assert "STOPPED EARLY" in result.stdout
    assert "pixel     done 0" in result.stdout
    assert "write_error 1)" in result.stdout  # only the write that hit the full disk, not one per image
    assert not [p for p in output.rglob("*") if p.name.endswith(".tmp")]
    assert verify(output).ok


@pytest.mark.parametrize("inside", ["", "out"])  # the mount itself, or a folder to create on it
def test_a_read_only_output_is_a_usage_error_before_any_image_is_decoded(input_dir, read_only_disk, inside):
    result = process(input_dir, read_only_disk / inside)
    assert result.returncode == 2
    assert "output folder" in result.stderr and "Read-only file system" in result.stderr
    assert result.stdout == ""


def test_an_output_that_is_a_file_is_a_usage_error_before_any_image_is_decoded(input_dir, tmp_path, monkeypatch,
                                                                                  caplog):
    decoded = []
    monkeypatch.setattr(engine_module, "decode", lambda path: decoded.append(path))
    (tmp_path / "out").write_text("a file, not a folder")
    assert process_cli(input_dir, tmp_path / "out", "--passes", "pixel") == 2
    assert "exists and is not a folder" in caplog.text
    assert decoded == []


def test_an_unwritable_output_folder_is_a_usage_error(input_dir, tmp_path, monkeypatch, caplog):
    """The same check without a mount: the probe write fails the way a read-only filesystem fails it."""
    real_write_bytes = Path.write_bytes

    def write_bytes(self, data):
        if ".write-check." in self.name:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    (tmp_path / "out").mkdir()
    assert process_cli(input_dir, tmp_path / "out", "--passes", "pixel") == 2
    assert "cannot write to the output folder" in caplog.text and "Read-only file system" in caplog.text
    assert not (tmp_path / "out" / "000").exists()


def test_a_run_record_that_cannot_be_saved_still_prints_the_summary_and_exits_2(input_dir, tmp_path, monkeypatch,
                                                                                  capsys):
    def save(self, state_dir):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RunSummary, "save", save)
    code = process_cli(input_dir, tmp_path / "out", "--passes", "pixel",
                       "--progress-every", "3600")
    out = capsys.readouterr().out
    assert code == 2
    assert "pixel     done 12, existing 0" in out
    assert "the run record could not be saved: OSError: [Errno 28] No space left on device" in out
    assert len(list((tmp_path / "out").rglob("pixel.npy"))) == 12  # the work itself is kept


def test_a_disk_that_fills_while_a_provenance_record_is_written_stops_the_run_saying_so_once(input_dir, tmp_path,
                                                                                             monkeypatch, caplog):
    from stratum_core import provenance

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(provenance, "_update", full)  # every artifact fits; its record does not
    output = tmp_path / "out"
    assert process_cli(input_dir, output, "--passes", "pixel", "--workers", "1", "--batch-size", "1") == 2
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]  # what the user sees
    assert sum("No space left on device" in m for m in said) == 1
    assert any("cannot write to" in m for m in said) and not any("provenance of" in m for m in said)
    written = sorted(p.parent.name for p in output.rglob("metadata.json"))
    assert written and len(written) < 12  # stopped early, and what was written is kept
    assert provenance.read_record(provenance.Store(output), written[0]) is None  # no record: unknown, not wrong
