"""The `stratum` command line as a user runs it: options, progress output, --verbose, exit codes."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from stratum_core.cli import build_parser
from stratum_core.progress import Progress
from stratum_testing import images
from stratum_testing.cli import process_cli

STRATUM = str(Path(sys.executable).parent / "stratum")


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory) -> Path:
    return images.write_sources(tmp_path_factory.mktemp("cli") / "in", {f"img{i}.png": (40 + i, 30) for i in range(3)})


def stratum(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([STRATUM, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_process_has_every_seed_option():
    help_text = build_parser()._subparsers._group_actions[0].choices["process"].format_help()
    for option in ("--output", "--passes", "--device", "--shard", "--image-list", "--ollama-url",
                   "--ollama-model", "--caption-max-tokens", "--progress-every", "--verbose"):
        assert option in help_text, option


def test_plain_progress_lines_when_not_a_terminal(input_dir, tmp_path):
    result = stratum("process", str(input_dir), "-o", str(tmp_path / "out"), "--passes", "metadata",
                     "--progress-every", "0", "--batch-size", "1")
    progress = [line for line in result.stderr.splitlines() if line.startswith("progress ")]
    assert result.returncode == 0
    assert [line.split()[1] for line in progress] == ["1/3", "2/3", "3/3"]
    assert "img/s" in progress[-1] and "ETA" in progress[-1]
    assert "\r" not in result.stderr


def test_progress_every_limits_the_lines_to_the_final_one(input_dir, tmp_path):
    result = stratum("process", str(input_dir), "-o", str(tmp_path / "out"), "--passes", "metadata",
                     "--progress-every", "3600")
    progress = [line for line in result.stderr.splitlines() if line.startswith("progress ")]
    assert len(progress) == 1 and progress[0].startswith("progress 3/3 images (100.0%)")


def test_verbose_logs_each_image_without_library_noise(input_dir, tmp_path):
    result = stratum("process", str(input_dir), "-o", str(tmp_path / "out"), "--passes", "metadata", "-v")
    assert {"img0 metadata ok", "img1 metadata ok", "img2 metadata ok"} <= set(result.stderr.splitlines())
    assert "STREAM" not in result.stderr  # Pillow's PNG chunk debug lines


def test_summary_goes_to_stdout(input_dir, tmp_path):
    result = stratum("process", str(input_dir), "-o", str(tmp_path / "out"), "--passes", "metadata")
    assert result.stdout.splitlines()[0].startswith("3 images, 3 needed work")


def test_bad_shard_exits_2_with_a_message(input_dir, tmp_path):
    result = stratum("process", str(input_dir), "-o", str(tmp_path / "out"), "--shard", "5/2")
    assert result.returncode == 2
    assert "--shard N/M needs 0 <= N < M" in result.stderr


def test_terminal_progress_draws_a_bar_with_rate_and_eta():
    stream = io.StringIO()
    progress = Progress(4, stream=stream, tty=True)
    for _ in range(4):
        progress.advance()
    text = stream.getvalue()
    assert text.startswith("\r[") and text.endswith("\n")
    assert "4/4 images (100.0%)" in text and "img/s ETA" in text
    assert "[########################]" in text


def test_progress_line_counts_only_worked_images_in_the_rate():
    progress = Progress(10, stream=io.StringIO(), tty=False, every=3600)
    progress.advance(5, worked=False)
    assert progress.line().startswith("5/10 images ( 50.0%) 0.00 img/s ETA --:--")


def test_an_empty_input_is_an_error(tmp_path, caplog):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no images here")
    assert process_cli(tmp_path / "in", tmp_path / "out", "--passes", "pixel") == 2
    assert "no images found" in caplog.text


def test_image_list_and_shard_key_together_are_refused(tmp_path, caplog):
    (tmp_path / "in").mkdir()
    (tmp_path / "list.txt").write_text("a.png\n")
    code = process_cli(tmp_path / "in", tmp_path / "out", "--shard-key", "x-0000",
                       "--image-list", str(tmp_path / "list.txt"))
    assert code == 2 and "give one" in caplog.text
