"""Unit tests of the captioning helpers: cleaning, retries, URL handling, HTTP failure reasons, JPEG."""

from __future__ import annotations

import io
import random
import socket

import numpy as np
import pytest
from PIL import Image

from stratum_core.captioning.cleaning import clean_caption
from stratum_core.captioning.client import RequestFailure, request_json, safe_url
from stratum_core.captioning.jpeg import encode_jpeg
from stratum_core.captioning.ollama import OllamaClient, ollama_base
from stratum_core.captioning.openai_api import OpenAIClient, openai_base
from stratum_core.captioning.retry import RetryPolicy, call_with_retries
from stratum_core.errors import InfrastructureError
from stratum_testing.ollama import FakeOllama
from stratum_testing.openai_server import FakeOpenAI


# ---------------------------------------------------------------------------- cleaning
@pytest.mark.parametrize("raw, clean", [
    ("The image shows a man in a grey coat.", "A man in a grey coat."),
    ("This image depicts a woman seated on a bench.", "A woman seated on a bench."),
    ("Here is a description:\n\nA dog lies on grass.", "A dog lies on grass."),
    ("Here's a detailed description of the image: a red car.", "A red car."),
    ("In this image, a child holds a kite.", "A child holds a kite."),
    ("Sure! Here is a description: The photo shows two cups.", "Two cups."),
    ("This is a photograph of a bridge at dusk.", "A bridge at dusk."),
    ("Description: A lamp on a desk.", "A lamp on a desk."),
    ("**The picture features** a cat on a sofa.", "A cat on a sofa."),
    ("Here is the caption for the image: A woman reads.", "A woman reads."),
    ("Here's a caption for this photo: two boats.", "Two boats."),
    ("Here is a description of the image:\nA tram.", "A tram."),
    ("The image showcases a marble staircase.", "A marble staircase."),
    ("This photo portrays an old fisherman.", "An old fisherman."),
    ("The picture illustrates a foggy harbour.", "A foggy harbour."),
    ("This image highlights a red door.", "A red door."),
    ("This image shows: - a man\n- a dog", "A man a dog"),
    ("Here is a description: # A quiet street at night.", "A quiet street at night."),
])
def test_clean_caption_removes_leading_preambles(raw: str, clean: str) -> None:
    assert clean_caption(raw) == clean


def test_clean_caption_joins_lines_into_one_paragraph_with_single_spaces() -> None:
    raw = "  A man stands.\n\nHe wears   a hat.\r\n\tThe light is soft.  "
    assert clean_caption(raw) == "A man stands. He wears a hat. The light is soft."


def test_clean_caption_keeps_a_sentence_that_merely_starts_like_a_preamble() -> None:
    assert clean_caption("The image is dark and grainy, showing a street.") == \
        "The image is dark and grainy, showing a street."


def test_clean_caption_strips_wrapping_quotes() -> None:
    assert clean_caption('"A bowl of fruit."') == "A bowl of fruit."


@pytest.mark.parametrize("raw", ["", "   \n\n ", "Here is a description:", "The image shows"])
def test_clean_caption_of_nothing_but_preamble_is_empty(raw: str) -> None:
    assert clean_caption(raw) == ""


# ---------------------------------------------------------------------------- retries
def test_retry_delays_grow_exponentially_within_their_cap() -> None:
    policy = RetryPolicy(retries=5, base_delay=0.5, max_delay=3.0)
    rng = random.Random(0)
    for attempt, cap in enumerate((0.5, 1.0, 2.0, 3.0, 3.0)):
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= cap
        assert max(delays) > 0.8 * cap  # jitter spreads over the whole window


def test_retry_after_is_a_floor_capped_by_the_max_delay() -> None:
    policy = RetryPolicy(retries=3, base_delay=0.01, max_delay=2.0)
    assert policy.delay(0, random.Random(0), retry_after=1.5) == 1.5
    assert policy.delay(0, random.Random(0), retry_after=60) == 2.0


def test_call_with_retries_retries_transient_failures_then_returns() -> None:
    answers = [RequestFailure("server_error", "500"), RequestFailure("timeout", "slow"), "ok"]
    sleeps: list[float] = []

    def flaky() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert call_with_retries(flaky, RetryPolicy(retries=3, base_delay=0.1), sleep=sleeps.append) == "ok"
    assert len(sleeps) == 2 and sleeps[0] <= 0.1 and sleeps[1] <= 0.2


def test_call_with_retries_gives_up_after_the_last_retry_with_the_last_reason() -> None:
    calls = []

    def failing() -> str:
        calls.append(1)
        raise RequestFailure("timeout" if len(calls) > 2 else "server_error", "no")

    with pytest.raises(RequestFailure) as info:
        call_with_retries(failing, RetryPolicy(retries=2, base_delay=0), sleep=lambda s: None)
    assert len(calls) == 3 and info.value.reason == "timeout"


def test_call_with_retries_does_not_retry_a_client_error() -> None:
    calls = []

    def refused() -> str:
        calls.append(1)
        raise RequestFailure("client_error", "400", retryable=False)

    with pytest.raises(RequestFailure):
        call_with_retries(refused, RetryPolicy(retries=3, base_delay=0), sleep=lambda s: None)
    assert len(calls) == 1


# ---------------------------------------------------------------------------- HTTP failure reasons
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_a_retryable_server_error() -> None:
    with pytest.raises(RequestFailure) as info:
        request_json(f"http://127.0.0.1:{_closed_port()}/api/tags", None, timeout=2)
    assert info.value.reason == "server_error" and info.value.retryable


@pytest.mark.parametrize("fault, reason, retryable", [
    (500, "server_error", True), (503, "server_error", True), (429, "server_error", True),
    (400, "client_error", False), (403, "client_error", False), (408, "client_error", False),
    ("bad_json", "bad_response", True), ("drop", "server_error", True),
])
def test_http_faults_map_to_closed_reasons(fault, reason: str, retryable: bool) -> None:
    with FakeOllama(always=fault) as url:
        with pytest.raises(RequestFailure) as info:
            request_json(url + "/api/generate", {"model": "gemma3:27b"}, timeout=5)
    assert (info.value.reason, info.value.retryable) == (reason, retryable)


def test_a_hanging_server_is_a_timeout() -> None:
    with FakeOllama(always="hang") as url:
        with pytest.raises(RequestFailure) as info:
            request_json(url + "/api/generate", {"model": "gemma3:27b"}, timeout=0.2)
    assert info.value.reason == "timeout"


def test_a_server_that_trickles_its_answer_times_out_after_the_whole_timeout() -> None:
    # A byte every 0.2 s keeps every single read short; only a deadline on the whole request stops it.
    with FakeOllama(always="trickle", trickle_interval=0.2) as url:
        with pytest.raises(RequestFailure) as info:
            request_json(url + "/api/generate", {"model": "gemma3:27b"}, timeout=1.0)
    assert info.value.reason == "timeout" and info.value.retryable


def test_a_trickled_answer_that_ends_within_the_timeout_is_read_whole() -> None:
    with FakeOllama(always="trickle", trickle_interval=0.001, captions="A cup.") as url:
        answer = request_json(url + "/api/generate", {"model": "gemma3:27b"}, timeout=30)
    assert answer["response"] == "A cup."


def test_429_carries_the_retry_after_seconds() -> None:
    with FakeOllama(always=429, retry_after="3") as url:
        with pytest.raises(RequestFailure) as info:
            request_json(url + "/api/generate", {"model": "gemma3:27b"}, timeout=5)
    assert info.value.retry_after == 3.0


# ---------------------------------------------------------------------------- URLs and model checks
@pytest.mark.parametrize("url", ["http://h:11434/api/generate", "http://h:11434/", "http://h:11434"])
def test_ollama_url_forms_share_one_base(url: str) -> None:
    assert ollama_base(url) == "http://h:11434"


@pytest.mark.parametrize("url, base", [
    ("http://h:8000/v1/chat/completions", "http://h:8000/v1"), ("http://h:8000/v1/", "http://h:8000/v1"),
    ("http://h:8000", "http://h:8000/v1"), ("https://api.example.com/openai/v1", "https://api.example.com/openai/v1"),
])
def test_openai_url_forms_resolve_to_the_api_base(url: str, base: str) -> None:
    assert openai_base(url) == base


def test_safe_url_drops_credentials() -> None:
    assert safe_url("http://user:pw@host:8000/v1") == "http://host:8000/v1"
    assert safe_url("http://host/v1") == "http://host/v1"


def test_ollama_check_accepts_a_model_named_without_its_latest_tag() -> None:
    with FakeOllama(models=["llava:latest"]) as url:
        OllamaClient(url, "llava", 10, 5).check()


def test_ollama_check_names_the_missing_model_and_what_the_server_has() -> None:
    with FakeOllama(models=["llava:7b"]) as url:
        with pytest.raises(InfrastructureError, match=r"no model 'gemma3:27b' \(it has: llava:7b\).*ollama pull"):
            OllamaClient(url, "gemma3:27b", 10, 5).check()


def test_openai_check_names_the_missing_model() -> None:
    with FakeOpenAI(models=["qwen-vl"]) as url:
        with pytest.raises(InfrastructureError, match=r"does not serve model 'other' \(it has: qwen-vl\)"):
            OpenAIClient(url + "/v1", "other", 10, 5).check()


def test_openai_client_reads_the_message_content() -> None:
    with FakeOpenAI(models=["m"], captions="A chair.") as url:
        assert OpenAIClient(url, "m", 10, 5).caption(b"jpeg", "prompt").text == "A chair."


# ---------------------------------------------------------------------------- JPEG
def test_encode_jpeg_keeps_the_exact_size_at_quality_of_at_least_90() -> None:
    crop = np.random.default_rng(0).integers(0, 256, (1216, 832, 3), dtype=np.uint8)
    sent = Image.open(io.BytesIO(encode_jpeg(crop)))
    assert sent.format == "JPEG" and sent.size == (832, 1216) and sent.mode == "RGB"
    reference = Image.open(io.BytesIO(encode_jpeg(crop, quality=90)))
    # A higher quality quantises no step more coarsely than quality 90 does.
    assert all(a <= b for a, b in zip(sent.quantization[0], reference.quantization[0]))
    assert sent.quantization[0] != reference.quantization[0]
