"""The README's first set-up command: quickstart registers shards and runs enrich_job + pixel_job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.dagster.helpers import write_tree


def _env(tmp_path: Path, **extra: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STRATUM_MODEL_DIR": str(tmp_path / "no-models"), **extra}
    env.pop("DAGSTER_HOME")  # the quickstart's own instance, keyed by the output folder
    return env


def test_quickstart_writes_metadata_and_pixels_and_says_what_is_missing(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "set1").mkdir(parents=True)
    for i, (w, h) in enumerate([(64, 48), (48, 64)]):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(images / "set1" / f"{i}.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "top.jpg")
    result = subprocess.run(
        [sys.executable, "-m", "stratum_dagster.quickstart", str(images), str(tmp_path / "out"),
         "--ollama-url", "http://127.0.0.1:9/api/generate"],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300)
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


def test_quickstart_keeps_its_instance_in_the_dataset_and_passes_on_caption_options(tmp_path: Path) -> None:
    from stratum_testing.ollama import FakeOllama

    write_tree(tmp_path / "images", ["a/0.png"])
    with FakeOllama(models=["llava:7b"], captions="A grey wall with a red square.") as url:
        result = subprocess.run(
            [sys.executable, "-m", "stratum_dagster.quickstart", str(tmp_path / "images"), str(tmp_path / "out"),
             "--caption-url", f"{url}/api/generate", "--caption-model", "llava:7b"],
            env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "a" / "0" / "caption.txt").read_text() == "A grey wall with a red square."
    home = tmp_path / "out" / ".stratum" / "dagster_home"
    assert (home / "dagster.yaml").is_file() and (home / "history").is_dir()
    assert f"DAGSTER_HOME={home}" in result.stdout
    for banner in ("Telemetry", "No dagster instance configuration file", "Welcome to Dagster"):
        assert banner not in result.stderr


def test_sigint_stops_the_quickstart_after_the_current_shard_with_exit_130(tmp_path: Path) -> None:
    write_tree(tmp_path / "images", [f"g{g:02d}/0.png" for g in range(40)])
    stderr = tmp_path / "stderr.log"
    with open(stderr, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "stratum_dagster.quickstart", str(tmp_path / "images"), str(tmp_path / "out"),
             "--caption-url", "http://127.0.0.1:9/api/generate"],
            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            deadline = time.monotonic() + 240
            while "g00-0000 enrich_job: ok" not in stderr.read_text() and time.monotonic() < deadline:
                assert process.poll() is None, stderr.read_text()
                time.sleep(0.2)
            process.send_signal(signal.SIGINT)
            stdout, _ = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    log = stderr.read_text()
    assert process.returncode == 130, log[-3000:]
    assert "stopped by SIGINT during shard g0" in log
    with_metadata = [g for g in range(40) if (tmp_path / "out" / f"g{g:02d}" / "0" / "metadata.json").exists()]
    assert 1 <= len(with_metadata) < 40
    assert "Total images: 40" in stdout  # the status of what it did, every registered source counted
