"""Caption answers a server should not send, and a server that dies mid-run (issue 12 defects 11 and 12)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stratum_core.captioning.cleaning import MAX_CAPTION_CHARS, clean_caption
from stratum_core.discover import discover
from stratum_core.engine import RunConfig, run
from stratum_core.passes.base import PassOptions
from stratum_core.passes.caption import CaptionConfig
from stratum_core.status import dataset_status
from stratum_core.store import Store
from stratum_testing.cli import process_cli
from stratum_testing.ollama import FakeOllama
from stratum_testing.openai_server import FakeOpenAI


@pytest.fixture()
def two_images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((96, 96, 3), 60 * i + 20, np.uint8)).save(folder / f"{i}.png")
    return folder


def caption_run(input_dir: Path, output: Path, **config):
    config.setdefault("backoff_base", 0.001)
    run_config = RunConfig(output, ("metadata", "caption"), pass_configs={"caption": CaptionConfig(**config)},
                           options=PassOptions(batch_size=8), workers=1)
    return run(run_config, discover(input_dir).images)


def run_record(output: Path) -> dict:
    (path,) = (output / ".stratum" / "runs").iterdir()
    return json.loads(path.read_text())


def test_a_huge_answer_is_stored_capped_at_a_word_and_counted_as_truncated(two_images, tmp_path):
    answer = "A very long caption. " * 250_000  # 5 MB
    with FakeOllama(captions=answer) as url:
        summary = caption_run(two_images, tmp_path / "out", url=url)
    text = (tmp_path / "out" / "0" / "caption.txt").read_text(encoding="utf-8")
    assert MAX_CAPTION_CHARS - 30 < len(text) <= MAX_CAPTION_CHARS
    assert answer.startswith(text) and answer[len(text)] == " "  # cut between two words
    assert summary.passes["caption"].done == 2 and dict(summary.passes["caption"].notes) == {"truncated": 2}
    assert run_record(tmp_path / "out")["passes"]["caption"]["notes"] == {"truncated": 2}


@pytest.mark.parametrize("fake_class", [FakeOllama, FakeOpenAI])
def test_an_answer_cut_at_the_token_limit_is_kept_and_counted_in_record_and_status(two_images, tmp_path,
                                                                                    fake_class):
    fake = fake_class(models=["m"], captions="A cube on a", truncated=True)
    with fake as url:
        backend, base = ("ollama", url) if fake_class is FakeOllama else ("openai", fake.base_url)
        summary = caption_run(two_images, tmp_path / "out", backend=backend, url=base, model="m")
    assert (tmp_path / "out" / "1" / "caption.txt").read_text() == "A cube on a"
    assert dict(summary.passes["caption"].notes) == {"truncated": 2}
    assert "caption   notes: truncated 2" in summary.format()
    status = dataset_status(tmp_path / "out")
    assert status.notes == {"caption": {"truncated": 2}}
    assert "Last run's caption notes: truncated 2" in status.format()


def test_an_untruncated_answer_has_no_note(two_images, tmp_path):
    with FakeOllama(captions="A cube.") as url:
        summary = caption_run(two_images, tmp_path / "out", url=url)
    assert not summary.passes["caption"].notes
    assert dataset_status(tmp_path / "out").notes == {}


def test_with_caption_truncated_fail_a_cut_answer_fails_the_image(two_images, tmp_path):
    with FakeOllama(captions="A cube on a", truncated=True) as url:
        code = process_cli(two_images, tmp_path / "out", "--passes", "caption",
                           "--ollama-url", url, "--caption-truncated", "fail", "--progress-every", "3600")
    assert code == 1
    assert not (tmp_path / "out" / "0" / "caption.txt").exists()
    assert Store(tmp_path / "out").read_failure("0", "caption")["reason"] == "truncated"


def test_control_characters_are_stripped_and_whitespace_controls_collapse():
    raw = "A\x00 man\x1b in a\tred\r\ncoat\x85stands\x7f\x9b by a\x0cwall."
    assert clean_caption(raw) == "A man in a red coat stands by a wall."


def test_control_characters_never_reach_caption_txt(two_images, tmp_path):
    with FakeOllama(captions="A\x00 red\x01 cube\x9f.") as url:
        caption_run(two_images, tmp_path / "out", url=url)
    assert (tmp_path / "out" / "0" / "caption.txt").read_text() == "A red cube."


def test_a_server_that_dies_mid_run_is_reported_once_and_the_run_record_is_saved(tmp_path, capsys, caplog):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((32, 32, 3), 30 * i, np.uint8)).save(folder / f"{i}.png")
    fake = FakeOllama()

    def captions(body):
        if fake.generate_count == 2:  # the server goes away after its second answer
            threading.Thread(target=fake.stop).start()
        return "A grey square."

    fake.captions = captions
    with fake as url:
        code = process_cli(folder, tmp_path / "out", "--passes", "caption",
                           "--ollama-url", url, "--batch-size", "1", "--caption-concurrency", "1",
                           "--caption-retries", "1", "--caption-backoff", "0.001", "--caption-timeout", "5",
                           "--progress-every", "3600")
    out = capsys.readouterr().out
    assert code == 2
    assert caplog.text.count("does not answer") == 1  # printed once, not by the lane and the CLI
    assert out.startswith("6 images") and "STOPPED EARLY" in out
    record = run_record(tmp_path / "out")
    assert "does not answer" in record["infrastructure_error"]
    # Which of the other images still got an outcome (a failure) before the stop depends on timing;
    # the captions after the server went away never did.
    assert 1 <= record["passes"]["caption"]["done"] < 6
