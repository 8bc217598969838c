"""bench/sapiens.py runs "ours" with the engine's own batching, as `stratum process` does."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")

from stratum_core.engine import DEFAULT_GPU_GROUP  # noqa: E402
from stratum_core.passes.base import PassOptions  # noqa: E402

BENCH = Path(__file__).resolve().parents[3] / "bench" / "sapiens.py"


@pytest.fixture
def bench(monkeypatch):
    """bench/sapiens.py as a module, its Engine replaced by one that records the RunConfig it gets."""
    monkeypatch.syspath_prepend(str(BENCH.parent))  # bench/ first on sys.path, as when the script runs (_common)
    spec = importlib.util.spec_from_file_location("bench_sapiens", BENCH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    configs = []

    class RecordingEngine:
        def __init__(self, config, passes):
            configs.append(config)

        def run(self, images, progress):
            return SimpleNamespace(passes={})

    monkeypatch.setattr(module, "Engine", RecordingEngine)
    monkeypatch.setattr(module, "synchronize", lambda device: None)
    module.recorded = configs
    return module


def test_ours_without_batch_size_uses_the_engines_cuda_group(bench, tmp_path):
    options = PassOptions(device="cuda:0")
    bench.ours(tmp_path, tmp_path / "out", (options, [SimpleNamespace(name="seg")]))
    [config] = bench.recorded
    assert config.options.batch_size is None and config.group_size == DEFAULT_GPU_GROUP
