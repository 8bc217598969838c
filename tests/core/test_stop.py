"""Stopping a run cleanly: SIGTERM and SIGINT against a real `stratum process`, a second signal, and the
library's stop request (issue 12 defect 4)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stratum_core.discover import discover
from stratum_core.engine import Engine, RunConfig, run
from stratum_core.errors import RunInterrupted
from stratum_core.passes.base import PassOptions
from stratum_core.passes.metadata import MetadataPass
from stratum_core.passes.pixel import PixelPass
from stratum_core.progress import Progress
from stratum_core.stopping import StopRequest, stop_on_signals
from stratum_core.verify import verify
from stratum_testing import images
from stratum_testing.ollama import FakeOllama
from stratum_testing.slow_stratum import SLOW_PROCESS

N_IMAGES = 24



@pytest.fixture(scope="module")
def input_dir(tmp_path_factory) -> Path:
    return images.write_sources(tmp_path_factory.mktemp("stop") / "in", images.numbered(N_IMAGES))


def start(input_dir: Path, output: Path, **env: str) -> subprocess.Popen:
    import os

    args = ["process", str(input_dir), "-o", str(output), "--passes", "pixel", "--workers", "1",
            "--batch-size", "1", "--progress-every", "3600"]
    return subprocess.Popen([sys.executable, "-c", SLOW_PROCESS, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env={**os.environ, **env})


def wait_for_files(output: Path, name: str, count: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while len(list(output.rglob(name))) < count and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be stopped"


def run_record(output: Path) -> dict:
    (path,) = (output / ".stratum" / "runs").iterdir()
    return json.loads(path.read_text())


@pytest.mark.parametrize("signum, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_a_signal_stops_the_run_cleanly_with_summary_record_and_exit_code(input_dir, tmp_path, signum, code, name):
    output = tmp_path / "out"
    proc = start(input_dir, output)
    wait_for_files(output, "pixel.npy", 3, proc)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stdout + stderr
    assert f"STOPPED EARLY ({name} received)" in stdout and "re-run the same command to resume" in stdout
    assert "Traceback" not in stderr
    record = run_record(output)
    assert record["stopped"] == f"{name} received"
    done = record["passes"]["pixel"]["done"]
    assert 3 <= done < N_IMAGES and record["images_left"] == N_IMAGES - done
    assert verify(output).ok  # every file under a final name is whole

    rerun = subprocess.run([sys.executable, "-m", "stratum_core", "process", str(input_dir), "-o", str(output),
                            "--passes", "pixel"], capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    done_now, existing = map(int, re.search(r"pixel\s+done (\d+), existing (\d+)", rerun.stdout).groups())
    assert existing >= done and done_now + existing == N_IMAGES  # it resumed; nothing was done twice


def test_a_second_signal_stops_at_once(input_dir, tmp_path):
    output = tmp_path / "out"
    proc = start(input_dir, output, SLOW_PASS_S="60")  # the first stop would wait for the batch in flight
    wait_for_files(output, "metadata.json", 1, proc)
    time.sleep(0.3)  # the first batch is inside the slow pass
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert "SIGTERM again: stopping now" in stderr
    assert "STOPPED EARLY" not in stdout  # it did not wait out the grace period to print a summary


def test_a_stop_while_the_caption_server_hangs_ends_after_the_grace_period(input_dir, tmp_path):
    """The requests in flight are abandoned after STOP_GRACE_S (5 s), not waited for (here 120 s)."""
    fake = FakeOllama(always="hang", hang_seconds=120)
    with fake as url:
        proc = subprocess.Popen([sys.executable, "-m", "stratum_core", "process", str(input_dir), "-o",
                                 str(tmp_path / "out"), "--passes", "caption", "--ollama-url", url,
                                 "--caption-timeout", "120", "--progress-every", "3600"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while fake.generate_count < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)  # well before the server would answer
    assert proc.returncode == 143, stderr
    assert "STOPPED EARLY (SIGTERM received)" in stdout and "caption   done 0" in stdout
    assert run_record(tmp_path / "out")["stopped"] == "SIGTERM received"


def test_a_stop_request_from_another_thread_raises_run_interrupted_with_the_saved_summary(input_dir, tmp_path):
    stop = StopRequest()

    class StoppingPixel(PixelPass):
        def forward(self, batch):
            stop.request("asked by the test", 143)  # e.g. an orchestrator's terminate hook
            return super().forward(batch)

    found = discover(input_dir)
    config = RunConfig(output_dir=tmp_path / "out", passes=("metadata",), workers=1,
                       options=PassOptions(batch_size=2))
    engine = Engine(config, [MetadataPass(PassOptions()), StoppingPixel(PassOptions())])
    with pytest.raises(RunInterrupted) as stopped:
        engine.run(found.images, found.errors, Progress(N_IMAGES, every=3600), stop=stop)
    summary = stopped.value.summary
    assert stopped.value.exit_code == 143 and summary.stopped == "asked by the test"
    assert summary.passes["pixel"].done == 2  # the batch in flight was written, nothing after it
    assert summary.images_left == N_IMAGES - 2
    assert len(list((tmp_path / "out").rglob("pixel.npy"))) == 2


def test_an_interrupt_raised_into_the_run_saves_a_record_saying_it_was_stopped(input_dir, tmp_path, monkeypatch):
    """What Dagster does on terminate: an exception raised in the thread running the engine."""
    import stratum_core.engine as engine_module

    real_decode = engine_module.decode
    calls = []

    def decode(path):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_decode(path)

    monkeypatch.setattr(engine_module, "decode", decode)
    found = discover(input_dir)
    with pytest.raises(KeyboardInterrupt):
        run(RunConfig(output_dir=tmp_path / "out", passes=("metadata", "pixel"), workers=1,
                      options=PassOptions(batch_size=1)),
            found.images, found.errors, Progress(N_IMAGES, every=3600))
    record = run_record(tmp_path / "out")
    assert record["stopped"] == "interrupted (KeyboardInterrupt)"
    assert 0 < record["passes"]["pixel"]["done"] < N_IMAGES
    assert verify(tmp_path / "out").ok


def test_signal_handlers_are_only_set_in_the_main_thread():
    stop, errors = StopRequest(), []

    def in_a_thread():
        try:
            with stop_on_signals(stop):  # a Dagster step may run the engine in a thread: must not raise
                pass
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert errors == [] and not stop.requested


def test_signal_handlers_are_restored_after_the_run():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(StopRequest()):
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
