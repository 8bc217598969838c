"""bench/host.py in its CI smoke form: it runs end to end and writes the JSON the issue specifies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[1] / "bench" / "host.py"
THREAD_GROUPS = {"decode", "lane", "writer", "main"}


def test_the_host_benchmark_smoke_run_writes_both_sets(tmp_path):
    out = tmp_path / "host.json"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--json", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert set(result["sets"]) == {"dinov3", "sapiens"}
    for name, measured in result["sets"].items():
        assert set(measured) == {"engine_img_s", "write_floor_img_s", "decode_floor_img_s", "thread_cpu_ms"}, name
        assert min(measured["engine_img_s"], measured["write_floor_img_s"], measured["decode_floor_img_s"]) > 0
        assert set(measured["thread_cpu_ms"]) == THREAD_GROUPS
        assert measured["thread_cpu_ms"]["writer"] > 0 and measured["thread_cpu_ms"]["decode"] > 0
    assert set(result["verify"]["workers_s"]) == {"1", "2"} and result["verify"]["naive_s"] > 0
    assert "dinov3" in done.stdout and "sapiens" in done.stdout and "verify: naive" in done.stdout
