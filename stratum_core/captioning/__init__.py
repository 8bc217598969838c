"""Captioning over HTTP: a small client interface, the Ollama and OpenAI-compatible clients, retries, cleaning."""

from stratum_core.captioning.cleaning import clean_caption
from stratum_core.captioning.client import CaptionClient, RequestFailure
from stratum_core.captioning.jpeg import encode_jpeg
from stratum_core.captioning.prompt import DEFAULT_PROMPT
from stratum_core.captioning.retry import RetryPolicy, call_with_retries

__all__ = ["CaptionClient", "DEFAULT_PROMPT", "RequestFailure", "RetryPolicy", "call_with_retries", "clean_caption",
           "encode_jpeg"]
