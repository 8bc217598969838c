"""Crashes and concurrency: SIGKILL mid-run, two runs at once, a full disk. Nothing partial survives."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stratum_core.discover import discover
from stratum_core.engine import RunConfig, run
from stratum_core.errors import InfrastructureError
from stratum_core.passes.base import PassOptions
from stratum_core.progress import Progress
from stratum_core.store import is_temp_file
from stratum_core.verify import verify
from stratum_testing import images
from stratum_testing.slow_stratum import SLOW_PROCESS

STRATUM = str(Path(sys.executable).parent / "stratum")
N_IMAGES = 30


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory) -> Path:
    sizes = {f"d{i % 3}/{i:03d}.png": (64 + i, 48) for i in range(N_IMAGES)}
    return images.write_sources(tmp_path_factory.mktemp("crash") / "in", sizes)


def process_cmd(input_dir: Path, output: Path, *extra: str) -> list[str]:
    return [STRATUM, "process", str(input_dir), "-o", str(output), "--passes", "pixel",
            "--progress-every", "3600", *extra]


def complete(output: Path) -> list[str]:
    """Image ids whose metadata.json and pixel.npy both exist."""
    return sorted(p.parent.relative_to(output).as_posix() for p in output.rglob("pixel.npy")
                  if (p.parent / "metadata.json").exists())


def final_names(output: Path) -> list[Path]:
    return [p for p in output.rglob("*") if p.is_file() and ".stratum" not in p.parts and not is_temp_file(p.name)]


def test_sigkill_mid_run_then_rerun_is_clean_and_complete(input_dir, tmp_path):
    output = tmp_path / "out"
    proc = subprocess.Popen(process_cmd(input_dir, output, "--workers", "1", "--batch-size", "1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(output.rglob("pixel.npy"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = complete(output)
    assert proc.returncode == -signal.SIGKILL
    assert 3 <= len(interrupted) < N_IMAGES, "the run finished before it could be killed"
    assert verify(output).ok  # whatever was left under a final name is whole

    rerun = subprocess.run(process_cmd(input_dir, output), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"existing {len(interrupted)}" in rerun.stdout
    report = verify(output)
    assert report.ok and report.images == N_IMAGES
    assert len(complete(output)) == N_IMAGES
    assert all(p.name in ("metadata.json", "pixel.npy", ".provenance.json") for p in final_names(output))


# SLOW_PROCESS decodes take 50 ms each, so two runs started together are sure to overlap.


def test_two_runs_at_once_leave_every_artifact_valid(input_dir, tmp_path):
    output = tmp_path / "out"
    args = process_cmd(input_dir, output, "--workers", "1", "--batch-size", "1")[1:]
    procs = [subprocess.Popen([sys.executable, "-c", SLOW_PROCESS, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stdout.read()) for p in procs]
    assert [code for code, _ in results] == [0, 0], results
    done = [int(re.search(r"pixel\s+done (\d+)", out).group(1)) for _, out in results]
    # A run skips an image the other finished since it planned it, so which run writes how many
    # depends on timing (one may write none); together they wrote every image at least once.
    assert sum(done) >= N_IMAGES, done
    report = verify(output)
    assert report.ok and report.images == N_IMAGES
    assert len(complete(output)) == N_IMAGES
    assert not [p for p in output.rglob("*") if is_temp_file(p.name)]


class _DiskFull:
    """A file object that writes half of what it is given, then fails like a full disk."""

    def __init__(self, f):
        self._f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def write(self, data: bytes) -> int:
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_stops_the_run_early_and_a_rerun_completes_it(input_dir, tmp_path, monkeypatch):
    """Issue 12 defect 3: the first ENOSPC stops the run (the other images are not each tried and failed)."""
    victim = "d1/001"
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        path = os.readlink(f"/proc/self/fd/{fd}")
        return _DiskFull(f) if path.startswith(str(tmp_path / "out" / victim / ".pixel.npy.")) else f

    monkeypatch.setattr(os, "fdopen", fdopen)
    found = discover(input_dir)
    with pytest.raises(InfrastructureError, match="No space left on device.*re-run") as stopped:
        run(RunConfig(output_dir=tmp_path / "out", passes=("metadata", "pixel"), workers=2,
                      options=PassOptions(batch_size=1)),
            found.images, found.errors, Progress(len(found.images), every=3600))
    monkeypatch.undo()

    summary = stopped.value.summary
    assert summary.exit_code == 2 and "No space left on device" in summary.stopped
    assert [(f.image, f.pass_name, f.reason) for f in summary.failures] == [(victim, "pixel", "write_error")]
    assert summary.passes["pixel"].done < N_IMAGES - 1  # it stopped instead of trying every image
    record = json.loads(next((tmp_path / "out" / ".stratum" / "runs").iterdir()).read_text())
    assert "No space left on device" in record["infrastructure_error"] and record["images_left"] > 0
    assert not [p for p in (tmp_path / "out").rglob("*") if is_temp_file(p.name)]
    assert verify(tmp_path / "out").ok

    rerun = run(RunConfig(output_dir=tmp_path / "out", passes=("metadata", "pixel")), found.images)
    assert rerun.exit_code == 0 and len(complete(tmp_path / "out")) == N_IMAGES
