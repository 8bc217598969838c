"""What a killed or overlapping run leaves: metadata.json before any other artifact, dead writers' temp files
swept, work another run did meanwhile not redone (issue 12 defects 5, 6 and "Also")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import stratum_core.engine as engine_module
from stratum_core.discover import discover
from stratum_core.engine import Engine, RunConfig
from stratum_core.outcomes import Outcome
from stratum_core.passes.base import Pass, PassOptions
from stratum_core.passes.metadata import MetadataPass
from stratum_core.passes.pixel import PixelPass, crop_to_pixel
from stratum_core.progress import Progress
from stratum_core.store import Store, _writer_tag
from stratum_core.artifacts import BY_NAME
from stratum_core.verify import verify
from stratum_testing import images

STRATUM = str(Path(sys.executable).parent / "stratum")
N_IMAGES = 8


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory) -> Path:
    return images.write_sources(tmp_path_factory.mktemp("faults") / "in", images.numbered(N_IMAGES))


def run_engine(input_dir: Path, output: Path, passes: list, batch_size: int = 4):
    found = discover(input_dir)
    config = RunConfig(output_dir=output, passes=("metadata",), workers=2,
                       options=PassOptions(batch_size=batch_size))
    return Engine(config, passes).run(found.images, found.errors, Progress(len(found.images), every=3600))


class InstantCaption(Pass):
    """A caption pass whose server answers at once: its own lane races the main lane's metadata."""

    name = "caption"
    io_bound = True

    def forward(self, batch):
        return batch

    def postprocess(self, outputs, items):
        return [Outcome.ok(caption="A gradient.") for _ in items]


class SlowMetadata(MetadataPass):
    def forward(self, batch):
        time.sleep(0.3)
        return super().forward(batch)


def test_metadata_json_is_written_before_any_other_artifact_of_the_image(input_dir, tmp_path, monkeypatch):
    order: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_write = Store.write

    def write(self, image_id, artifact, value):
        path = real_write(self, image_id, artifact, value)
        with lock:
            order.append((image_id, artifact.filename))
        return path

    monkeypatch.setattr(Store, "write", write)
    options = PassOptions()
    run_engine(input_dir, tmp_path / "out", [SlowMetadata(options), InstantCaption(options)])
    for i in range(N_IMAGES):
        image_id = f"{i:03d}"
        assert order.index((image_id, "metadata.json")) < order.index((image_id, "caption.txt")), order


def test_a_killed_run_leaves_no_artifact_without_metadata_so_verify_passes(input_dir, tmp_path):
    output = tmp_path / "out"
    for trial in range(2):  # kill at two different moments
        proc = subprocess.Popen([STRATUM, "process", str(input_dir), "-o", str(output), "--passes", "pixel",
                                 "--batch-size", "1", "--workers", "1", "--progress-every", "3600"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(list(output.rglob("pixel.npy"))) < 2 * trial + 1 and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for pixel in output.rglob("pixel.npy"):
            assert (pixel.parent / "metadata.json").exists(), pixel
        report = verify(output)
        assert report.ok and report.unfinished == []


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_planning_an_image_sweeps_temp_files_whose_writer_is_dead(input_dir, tmp_path):
    out = tmp_path / "out"
    folder = out / "000"
    folder.mkdir(parents=True)
    host = _writer_tag().split("~")[0]
    dead = folder / f".pixel.npy.{host}~{dead_pid()}~0123456789ab.tmp"
    live = folder / f".pixel.npy.{host}~{os.getpid()}~0123456789ab.tmp"  # a live writer's file in progress
    other_host = folder / f".pixel.npy.elsewhere~{dead_pid()}~0123456789ab.tmp"  # shared output: not ours to judge
    old_style = folder / ".pixel.npy.0123456789ab.tmp"  # no writer in its name: verify --fix's job
    for path in (dead, live, other_host, old_style):
        path.write_bytes(b"partial")
    options = PassOptions()
    run_engine(input_dir, out, [MetadataPass(options), PixelPass(options)])
    assert not dead.exists()
    assert live.exists() and other_host.exists() and old_style.exists()


def test_a_killed_runs_temp_file_is_gone_after_the_next_run(input_dir, tmp_path):
    out = tmp_path / "out"
    script = ("import os, sys\n"
              "from stratum_core.store import Store\n"
              "from stratum_core.artifacts import BY_NAME\n"
              "import numpy as np\n"
              "def never_finishes(f):\n"
              "    f.write(b'half an array'); f.flush(); os.kill(os.getpid(), 9)\n"
              "from stratum_core import store\n"
              f"store.write_atomic(Store({str(out)!r}).path('001', BY_NAME['pixel']), never_finishes)\n")
    subprocess.run([sys.executable, "-c", script], timeout=60)
    assert [n for n in os.listdir(out / "001") if n.endswith(".tmp")]  # what a kill mid-write leaves
    options = PassOptions()
    run_engine(input_dir, out, [MetadataPass(options), PixelPass(options)])
    assert sorted(n for n in os.listdir(out / "001") if n != ".provenance.json") == ["metadata.json", "pixel.npy"]


class RecordingPixelPass(PixelPass):
    def __init__(self, options):
        super().__init__(options)
        self.seen: list[str] = []

    def forward(self, batch):
        self.seen.extend(item.image_id for item in batch)
        return super().forward(batch)


def test_an_image_another_run_finished_since_planning_is_not_computed_again(input_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_decode = engine_module.decode

    def decode(path):  # after planning, "another process" writes 003's pixel.npy
        decoded = real_decode(path)
        if path.name == "003.png":
            Store(out).write("003", BY_NAME["pixel"], crop_to_pixel(decoded.crop))
        return decoded

    monkeypatch.setattr(engine_module, "decode", decode)
    recording = RecordingPixelPass(PassOptions())
    summary = run_engine(input_dir, out, [MetadataPass(PassOptions()), recording])
    assert "003" not in recording.seen and len(recording.seen) == N_IMAGES - 1
    assert (summary.passes["pixel"].done, summary.passes["pixel"].existing) == (N_IMAGES - 1, 1)
    assert verify(out).ok
