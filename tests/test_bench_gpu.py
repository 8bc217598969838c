"""`bench/gpu.py --smoke` runs in CI (same code as the GPU measurement, tiny shapes on the CPU), so it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_benchmark_smoke_run_writes_its_table_for_every_pass(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OUT": str(tmp_path / "out")}
    done = subprocess.run([sys.executable, "bench/gpu.py", "--smoke", "--work", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "gpu.json").read_text())
    rows = {r["name"]: r for r in record["rows"]}
    assert list(rows) == ["dinov3", "t5", "pose", "sapiens"]
    for row in rows.values():
        assert row["ours_per_s"] > 0 and row["naive_per_s"] > 0
    assert rows["dinov3"]["flops_per_item"] > 1e9  # counted from the architecture: the 1024² patch embedding alone
    assert rows["pose"]["note"].startswith("backend torch")  # the smoke run exercises the torch pose backend
    assert rows["sapiens"]["precision"] == {"seg": "fp32", "depth": "fp32", "normal": "fp32"}
    assert record["host"]["decode_images_per_s"] > 0 and record["host"]["write_mb_per_s"] > 0
    table = (tmp_path / "out" / "gpu.md").read_text()
    assert "| pass | ours | naive b1 fp32 |" in table and table in done.stdout
