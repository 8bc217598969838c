"""The README's first set-up command: quickstart registers shards and runs enrich_job + pixel_job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def test_quickstart_writes_metadata_and_pixels_and_says_what_is_missing(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "set1").mkdir(parents=True)
    for i, (w, h) in enumerate([(64, 48), (48, 64)]):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(images / "set1" / f"{i}.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "top.jpg")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home"), "HF_HUB_OFFLINE": "1",
           "STRATUM_MODEL_DIR": str(tmp_path / "no-models")}
    result = subprocess.run(
        [sys.executable, "-m", "stratum_dagster.quickstart", str(images), str(tmp_path / "out"),
         "--ollama-url", "http://127.0.0.1:9/api/generate"],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for image_id in ("set1/0", "set1/1", "top"):
        assert (tmp_path / "out" / image_id / "metadata.json").is_file()
        assert (tmp_path / "out" / image_id / "pixel.npy").is_file()
    assert "Total images: 3" in result.stdout
    assert "pixel: 3 / 3 (100.0%)" in result.stdout
    assert "stratum models download --passes dinov3" in result.stdout
    assert "127.0.0.1:9" in result.stdout  # the caption server it could not reach
    shard_files = sorted(n for n in os.listdir(tmp_path / "out" / ".stratum" / "shards") if n.endswith(".json"))
    assert shard_files == ["_root-0000.json", "set1-0000.json"]
