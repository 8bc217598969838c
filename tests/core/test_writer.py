"""The writer pool: per-image order on one thread, bounded queues, a draining close, sized from the bytes."""

from __future__ import annotations

import queue
import random
import threading
import time

import numpy as np
import pytest

from stratum_core import engine as engine_module
from stratum_core.artifacts import artifacts_of
from stratum_core.discover import discover
from stratum_core.engine import Engine, RunConfig
from stratum_core.passes.base import PassOptions
from stratum_core.passes.metadata import MetadataPass
from stratum_core.passes.pixel import PixelPass
from stratum_core.progress import Progress
from stratum_core.store import Store
from stratum_core.writer import WriterPool, writer_count
from stratum_testing import images

STOP = object()


class Recorder:
    """A writer loop that notes (thread name, entry) for each entry, after a small random delay."""

    def __init__(self, delay: float = 0.002):
        self.written: list[tuple[str, tuple]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def loop(self, q: queue.Queue) -> None:
        rng = random.Random(threading.current_thread().name)
        while (entry := q.get()) is not STOP:
            time.sleep(rng.uniform(0, self.delay))
            with self.lock:
                self.written.append((threading.current_thread().name, entry))


def test_each_image_is_written_in_queued_order_on_one_thread():
    recorder = Recorder()
    pool = WriterPool(recorder.loop, threads=3, capacity=12, stop=STOP)
    ids = [f"img{i}" for i in range(20)]
    for step in ("metadata", "seg", "depth", "normal"):
        for image_id in ids:
            pool.put((image_id, step))
    pool.close()
    for image_id in ids:
        mine = [(thread, entry[1]) for thread, entry in recorder.written if entry[0] == image_id]
        assert [step for _, step in mine] == ["metadata", "seg", "depth", "normal"]
        assert len({thread for thread, _ in mine}) == 1
    assert len({thread for thread, _ in recorder.written}) == 3  # the work is spread


def test_close_drains_everything_queued_before_it():
    recorder = Recorder(delay=0.01)
    pool = WriterPool(recorder.loop, threads=2, capacity=100, stop=STOP)
    for i in range(40):
        pool.put((f"img{i}", "pixel"))
    pool.close()
    assert sorted(entry[0] for _, entry in recorder.written) == sorted(f"img{i}" for i in range(40))
    assert not [t for t in threading.enumerate() if t.name.startswith("stratum-writer")]


def test_a_full_writer_queue_blocks_the_producer():
    release = threading.Event()

    def stuck(q: queue.Queue) -> None:
        release.wait()
        while q.get() is not STOP:
            pass

    pool = WriterPool(stuck, threads=1, capacity=2, stop=STOP)
    pool.put(("a", 1))
    pool.put(("a", 2))
    with pytest.raises(queue.Full):
        pool.put(("a", 3), timeout=0.05)
    release.set()
    pool.close()


@pytest.mark.parametrize("passes, cpus, expected", [
    (("metadata",), 8, 1),  # metadata.json only: nothing worth a second thread
    (("metadata", "dinov3"), 8, 3),  # 8 MiB of patches at 1024x1024
    (("metadata", "seg", "depth", "normal"), 8, 3),  # 9 MiB per 1 MP image
    (("metadata", "dinov3", "seg", "depth", "normal", "pixel"), 8, 4),  # capped at MAX_WRITERS
    (("metadata", "dinov3"), 2, 2),  # never more threads than CPUs
])
def test_writer_threads_follow_the_bytes_per_image(passes, cpus, expected):
    artifacts = [a for p in passes for a in artifacts_of(p)]
    assert writer_count(artifacts, cpus=cpus) == expected


def test_an_explicit_writer_count_wins():
    assert writer_count(artifacts_of("metadata"), requested=3, cpus=1) == 3


def pixel_run(input_dir, output, writers):
    found = discover(input_dir)
    config = RunConfig(output_dir=output, passes=("metadata", "pixel"), workers=2, options=PassOptions(batch_size=2),
                       writers=writers)
    options = PassOptions()
    engine = Engine(config, [MetadataPass(options), PixelPass(options)])
    return engine.run(found.images, found.errors, Progress(len(found.images), every=3600))


def test_several_writers_write_what_one_writes(tmp_path):
    root = tmp_path / "in"
    for i in range(9):
        images.write_gradient(root / f"{i}.png", 40 + 8 * i, 48, seed=i)
    one = pixel_run(root, tmp_path / "one", writers=1)
    three = pixel_run(root, tmp_path / "three", writers=3)
    assert one.passes["pixel"].done == three.passes["pixel"].done == 9
    for path in sorted((tmp_path / "one").rglob("*.npy")):
        twin = tmp_path / "three" / path.relative_to(tmp_path / "one")
        assert np.array_equal(np.load(path), np.load(twin))


def test_a_write_error_on_one_writer_fails_that_artifact_and_the_others_go_on(tmp_path, monkeypatch):
    root = tmp_path / "in"
    for i in range(6):
        images.write_gradient(root / f"{i}.png", 32, 32, seed=i)
    real_write = Store.write

    def failing_write(self, image_id, artifact, value):
        if image_id == "3" and artifact.name == "pixel":
            raise PermissionError(13, "Permission denied")
        return real_write(self, image_id, artifact, value)

    monkeypatch.setattr(Store, "write", failing_write)
    summary = pixel_run(root, tmp_path / "out", writers=2)
    assert [(f.image, f.pass_name, f.reason) for f in summary.failures] == [("3", "pixel", "write_error")]
    assert summary.passes["pixel"].done == 5
    assert (tmp_path / "out" / "3" / ".failed-pixel.json").exists()


def test_the_engine_starts_the_writers_it_sized(tmp_path, monkeypatch):
    started = []
    real = engine_module.WriterPool

    def spy(loop, threads, capacity, stop):
        started.append(threads)
        return real(loop, threads, capacity, stop)

    monkeypatch.setattr(engine_module, "WriterPool", spy)
    root = tmp_path / "in"
    images.write_gradient(root / "a.png", 32, 32)
    pixel_run(root, tmp_path / "out", writers=None)
    assert started == [writer_count(artifacts_of("metadata") + artifacts_of("pixel"))]
