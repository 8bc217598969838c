"""The caption pass end to end: engine + pass + loopback fake Ollama / OpenAI servers."""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stratum_core.captioning.prompt import DEFAULT_PROMPT
from stratum_core.discover import discover
from stratum_core.engine import Engine, RunConfig, run
from stratum_core.errors import ConfigError, InfrastructureError
from stratum_core.passes.base import PassOptions
from stratum_core.passes.caption import CaptionConfig, CaptionPass
from stratum_core.store import Store
from stratum_testing.cli import process_cli
from stratum_testing.ollama import FakeOllama
from stratum_testing.openai_server import FakeOpenAI

# Source sizes whose buckets are 1024x1024 and 832x1216.
SIZES = {"square": (96, 96), "portrait": (64, 96)}


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    """Two small images in different buckets."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i, (name, (w, h)) in enumerate(SIZES.items()):
        Image.fromarray(np.full((h, w, 3), 40 * i + 20, np.uint8)).save(folder / f"{name}.png")
    return folder


@pytest.fixture()
def one_image(tmp_path: Path) -> Path:
    """A folder holding only square.png."""
    folder = tmp_path / "one"
    folder.mkdir()
    Image.fromarray(np.full((96, 96, 3), 20, np.uint8)).save(folder / "square.png")
    return folder


def many_images(folder: Path, count: int) -> Path:
    folder.mkdir()
    for i in range(count):
        Image.fromarray(np.full((32, 32, 3), i, np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def caption_run(input_dir: Path, output_dir: Path, batch_size: int = 8, **config) -> tuple:
    """Run metadata + caption with a fast-retrying config; returns (summary, store)."""
    config.setdefault("backoff_base", 0.001)
    caption = CaptionConfig(**config)
    run_config = RunConfig(output_dir, ("metadata", "caption"), pass_configs={"caption": caption},
                           options=PassOptions(batch_size=batch_size), workers=1)
    summary = run(run_config, discover(input_dir).images)
    return summary, Store(output_dir)


def caption_of(store: Store, image_id: str) -> str | None:
    path = store.image_dir(image_id) / "caption.txt"
    return path.read_text(encoding="utf-8") if path.exists() else None


def parse(argv: list[str], environ: dict[str, str] | None = None) -> CaptionConfig:
    parser = argparse.ArgumentParser()
    CaptionPass.add_arguments(parser)
    return CaptionPass.config_from_args(parser.parse_args(argv), environ or {})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- requests and cleaning
def test_request_carries_model_prompt_options_and_a_bucket_sized_jpeg(images: Path, tmp_path: Path) -> None:
    fake = FakeOllama(models=["llava:13b"])
    with fake as url:
        summary, _ = caption_run(images, tmp_path / "out", url=url + "/api/generate", model="llava:13b",
                                 max_tokens=77)
    assert summary.passes["caption"].done == 2
    sizes = []
    for body in fake.requests:
        assert (body["model"], body["prompt"], body["stream"], body["options"]) == \
            ("llava:13b", DEFAULT_PROMPT, False, {"num_predict": 77})
        (encoded,) = body["images"]
        sent = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert sent.format == "JPEG"
        sizes.append(sent.size)
    assert sorted(sizes) == sorted([(1024, 1024), (832, 1216)])


def test_preambles_and_line_breaks_are_cleaned_from_the_written_caption(images: Path, tmp_path: Path) -> None:
    with FakeOllama(captions="Here is a description:\n\nThe image shows a grey\nsquare   on white.") as url:
        _, store = caption_run(images, tmp_path / "out", url=url)
    assert caption_of(store, "square") == "A grey square on white."
    assert caption_of(store, "portrait") == "A grey square on white."


def test_empty_response_records_a_failure_and_writes_no_file(images: Path, tmp_path: Path) -> None:
    fake = FakeOllama(always="empty")
    with fake as url:
        summary, store = caption_run(images, tmp_path / "out", url=url, retries=1)
    assert caption_of(store, "square") is None and caption_of(store, "portrait") is None
    assert store.read_failure("square", "caption")["reason"] == "empty_result"
    assert dict(summary.passes["caption"].failed) == {"empty_result": 2}
    assert fake.generate_count == 4  # each image tried twice
    assert summary.exit_code == 1


def test_a_server_that_fails_twice_then_answers_gets_the_caption_written(one_image: Path, tmp_path: Path) -> None:
    fake = FakeOllama(captions="A cube.", faults=[500, 503])
    with fake as url:
        summary, store = caption_run(one_image, tmp_path / "out", url=url, retries=3)
    assert caption_of(store, "square") == "A cube."
    assert fake.generate_count == 3 and summary.exit_code == 0
    assert store.read_failure("square", "caption") is None


def test_a_server_that_always_returns_500_fails_that_image_after_the_retries_and_the_run_goes_on(
        tmp_path: Path) -> None:
    folder = many_images(tmp_path / "in", 4)
    fake = FakeOllama(captions="A tile.", faults=[500, 500, 500])  # every attempt of the first image
    with fake as url:
        summary, store = caption_run(folder, tmp_path / "out", url=url, retries=2, concurrency=1)
    assert store.read_failure("000", "caption")["reason"] == "server_error"
    assert caption_of(store, "000") is None
    assert [caption_of(store, f"{i:03d}") for i in (1, 2, 3)] == ["A tile."] * 3
    assert fake.generate_count == 3 + 3
    assert summary.passes["caption"].done == 3 and summary.exit_code == 1


def test_a_client_error_is_not_retried(one_image: Path, tmp_path: Path) -> None:
    fake = FakeOllama(always=400)
    with fake as url:
        summary, store = caption_run(one_image, tmp_path / "out", url=url, retries=3)
    assert store.read_failure("square", "caption")["reason"] == "client_error"
    assert fake.generate_count == 1


def test_rate_limiting_is_retried(one_image: Path, tmp_path: Path) -> None:
    fake = FakeOllama(captions="A cube.", faults=[429], retry_after="0")
    with fake as url:
        _, store = caption_run(one_image, tmp_path / "out", url=url, retries=1)
    assert caption_of(store, "square") == "A cube." and fake.generate_count == 2


def test_invalid_json_is_retried_then_recorded_as_bad_response(one_image: Path, tmp_path: Path) -> None:
    fake = FakeOllama(always="bad_json")
    with fake as url:
        _, store = caption_run(one_image, tmp_path / "out", url=url, retries=1)
    assert store.read_failure("square", "caption")["reason"] == "bad_response"
    assert fake.generate_count == 2


def test_a_hanging_server_fails_the_image_with_a_timeout(one_image: Path, tmp_path: Path) -> None:
    fake = FakeOllama(always="hang", hang_seconds=20)
    started = time.monotonic()
    with fake as url:
        summary, store = caption_run(one_image, tmp_path / "out", url=url, timeout=0.3, retries=1)
    assert store.read_failure("square", "caption")["reason"] == "timeout"
    assert fake.generate_count == 2
    assert time.monotonic() - started < 10  # the timeout fired; the fake would hang for 20 s


# ---------------------------------------------------------------------------- before the run
def test_an_unknown_model_stops_the_run_before_anything_is_written(images: Path, tmp_path: Path) -> None:
    fake = FakeOllama(models=["llava:7b"])
    with fake as url, pytest.raises(InfrastructureError, match=r"no model 'gemma3:27b'.*ollama pull gemma3:27b"):
        caption_run(images, tmp_path / "out", url=url)
    assert fake.generate_count == 0
    assert not (tmp_path / "out").exists() or not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_a_server_that_is_down_stops_the_run_with_a_clear_message(images: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/api/generate"
    with pytest.raises(InfrastructureError, match=r"Ollama server at http://127\.0\.0\.1:\d+ does not answer"):
        caption_run(images, tmp_path / "out", url=url)
    assert not (tmp_path / "out").exists() or not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


# ---------------------------------------------------------------------------- concurrency
@pytest.mark.parametrize("concurrency, batch_size", [(3, 8), (5, 2)])
def test_concurrency_limit_is_reached_and_never_exceeded(tmp_path: Path, concurrency: int,
                                                         batch_size: int) -> None:
    folder = many_images(tmp_path / "in", 12)
    fake = FakeOllama(latency=0.4)  # long beside a decode, so the limit, not the feeder, bounds it
    with fake as url:
        summary, _ = caption_run(folder, tmp_path / "out", batch_size=batch_size, url=url,
                                 concurrency=concurrency)
    assert summary.passes["caption"].done == 12
    assert fake.max_in_flight == concurrency


# ---------------------------------------------------------------------------- OpenAI backend and options
def test_openai_round_trip_sends_the_key_as_bearer_and_never_prints_it(
        images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    key = "sk-test-secret-4242"
    fake = FakeOpenAI(models=["qwen2.5-vl"], api_key=key, captions="The image shows a grey tile.")
    caplog.set_level(logging.DEBUG)
    with fake as url:
        config = parse(["--caption-backend", "openai", "--caption-url", url + "/v1",
                        "--caption-model", "qwen2.5-vl", "--caption-max-tokens", "64"],
                       {"STRATUM_CAPTION_API_KEY": key})
        run_config = RunConfig(tmp_path / "out", ("metadata", "caption"), pass_configs={"caption": config},
                               verbose=True)
        summary = run(run_config, discover(images).images)
    store = Store(tmp_path / "out")
    assert caption_of(store, "square") == "A grey tile." and summary.exit_code == 0
    assert all(h.get("Authorization") == f"Bearer {key}" for h in fake.headers)
    body = fake.requests[0]
    assert (body["model"], body["max_tokens"]) == ("qwen2.5-vl", 64)
    text_part, image_part = body["messages"][0]["content"]
    assert text_part == {"type": "text", "text": DEFAULT_PROMPT}
    assert image_part["image_url"]["url"].startswith("data:image/jpeg;base64,")
    printed = capsys.readouterr()
    record_files = [p.read_text() for p in (tmp_path / "out").rglob("*.json")]
    for text in (caplog.text, printed.out, printed.err, repr(config), json.dumps(summary.to_dict()), *record_files):
        assert key not in text


def test_openai_backend_with_a_wrong_key_stops_the_run_with_a_hint(images: Path, tmp_path: Path) -> None:
    with FakeOpenAI(models=["m"], api_key="right") as url:
        with pytest.raises(InfrastructureError, match="API key"):
            caption_run(images, tmp_path / "out", backend="openai", url=url, model="m", api_key="wrong")


def test_prompt_file_replaces_the_prompt_and_provenance_records_prompt_and_model(
        images: Path, tmp_path: Path) -> None:
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("Describe only the colours.\n", encoding="utf-8")
    fake = FakeOllama(models=["gemma3:4b"])
    with fake as url:
        config = parse(["--ollama-url", url + "/api/generate", "--ollama-model", "gemma3:4b",
                        "--caption-prompt-file", str(prompt_file)])
        summary = run(RunConfig(tmp_path / "out", ("metadata", "caption"), pass_configs={"caption": config}),
                      discover(images).images)
    assert {body["prompt"] for body in fake.requests} == {"Describe only the colours."}
    provenance = summary.provenance["caption"]
    assert (provenance["model"], provenance["prompt"], provenance["prompt_file"]) == \
        ("gemma3:4b", "Describe only the colours.", str(prompt_file))
    (record,) = (tmp_path / "out" / ".stratum" / "runs").glob("*.json")
    assert json.loads(record.read_text())["provenance"]["caption"]["prompt"] == "Describe only the colours."


def test_existing_captions_are_not_requested_again(images: Path, tmp_path: Path) -> None:
    fake = FakeOllama()
    with fake as url:
        caption_run(images, tmp_path / "out", url=url)
        summary, _ = caption_run(images, tmp_path / "out", url=url)
    assert fake.generate_count == 2 and summary.passes["caption"].existing == 2


# ---------------------------------------------------------------------------- config edge
def test_config_from_args_uses_the_ollama_defaults() -> None:
    config = parse([])
    assert (config.backend, config.resolved_url, config.resolved_model, config.concurrency, config.timeout,
            config.retries) == ("ollama", "http://localhost:11434/api/generate", "gemma3:27b", 4, 120.0, 3)


def test_config_from_args_does_not_send_an_openai_key_to_ollama() -> None:
    assert parse([], {"OPENAI_API_KEY": "sk-x"}).api_key is None
    assert parse(["--caption-backend", "openai", "--caption-model", "m"], {"OPENAI_API_KEY": "sk-x"}).api_key == "sk-x"


def test_the_api_key_is_not_in_the_config_repr() -> None:
    assert "sk-hidden" not in repr(CaptionConfig(api_key="sk-hidden"))


@pytest.mark.parametrize("argv, message", [
    (["--caption-backend", "openai"], "needs --caption-model"),
    (["--caption-concurrency", "0"], "--caption-concurrency must be at least 1"),
    (["--caption-prompt-file", "/nonexistent/prompt.txt"], "cannot read --caption-prompt-file"),
])
def test_bad_options_are_config_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(argv)


def test_engine_runs_enough_caption_batches_at_once_to_keep_the_requests_in_flight(tmp_path: Path) -> None:
    caption = CaptionPass(PassOptions(), CaptionConfig(concurrency=16))
    engine = Engine(RunConfig(tmp_path, ("metadata", "caption"), PassOptions(batch_size=8)), passes=[caption])
    assert engine.lane_parallelism([caption]) == 5


def test_cli_run_against_a_server_that_always_fails_exits_non_zero(images: Path, tmp_path: Path) -> None:
    fake = FakeOllama(always=500)
    with fake as url:
        code = process_cli(images, tmp_path / "out", "--passes", "caption",
                           "--ollama-url", url, "--caption-retries", "1", "--caption-backoff", "0.001")
    assert code == 1
    assert Store(tmp_path / "out").read_failure("square", "caption")["reason"] == "server_error"
    assert fake.generate_count == 4


def test_cli_run_with_the_server_down_exits_2_and_writes_nothing(images: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    code = process_cli(images, tmp_path / "out", "--passes", "caption",
                       "--ollama-url", f"http://127.0.0.1:{_closed_port()}/api/generate")
    assert code == 2
    assert "does not answer" in caplog.text and "ollama serve" in caplog.text
    assert not (tmp_path / "out").exists()


def test_a_server_that_dies_mid_run_stops_the_run_instead_of_failing_every_image(one_image: Path) -> None:
    fake = FakeOllama(captions="A cube.")
    with fake as url:
        caption = CaptionPass(PassOptions(), CaptionConfig(url=url, retries=1, backoff_base=0.001, timeout=2))
        caption.load()
    item = _item(one_image / "square.png")
    try:
        with pytest.raises(InfrastructureError, match="does not answer"):
            caption.run_batch([item])
    finally:
        caption.close()


def test_a_batch_of_5xx_from_a_live_server_is_recorded_per_image(one_image: Path) -> None:
    with FakeOllama(always=500) as url:
        caption = CaptionPass(PassOptions(), CaptionConfig(url=url, retries=1, backoff_base=0.001))
        caption.load()
        try:
            [outcome] = caption.run_batch([_item(one_image / "square.png")])
        finally:
            caption.close()
    assert (outcome.status, outcome.reason) == ("failed", "server_error")


def _item(path: Path):
    from stratum_core.discover import SourceImage
    from stratum_core.intake import decode
    from stratum_core.passes.base import Item

    return Item(SourceImage(path.name, path), decode(path))
