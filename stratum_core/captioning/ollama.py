"""Ollama backend: POST /api/generate with the image as base64 JPEG; /api/tags to check the model."""

from __future__ import annotations

import base64

from stratum_core.captioning.client import Answer, CaptionClient, RequestFailure, request_json, safe_url
from stratum_core.errors import InfrastructureError

DEFAULT_OLLAMA_URL = "http://localhost:11434/api/generate"
DEFAULT_OLLAMA_MODEL = "gemma3:27b"
CHECK_TIMEOUT = 10.0  # seconds for /api/tags: a live server answers at once


def ollama_base(url: str) -> str:
    """`http://h:11434/api/generate`, `http://h:11434/` or `http://h:11434` → `http://h:11434`."""
    url = url.rstrip("/")
    for suffix in ("/api/generate", "/api/chat", "/api"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


def _canonical(name: str) -> str:
    """Ollama reads a model name without a tag as `:latest`."""
    return name if ":" in name else f"{name}:latest"


class OllamaClient(CaptionClient):
    endpoint = "/api/generate"
    base_url = staticmethod(ollama_base)

    def check(self) -> None:
        try:
            tags = request_json(self.base + "/api/tags", None, min(self.timeout, CHECK_TIMEOUT), self._headers)
        except RequestFailure as failure:
            raise InfrastructureError(
                f"the Ollama server at {safe_url(self.base)} does not answer ({failure.message}); "
                f"start it with `ollama serve` or point --ollama-url at it") from None
        available = {_canonical(str(m.get(key, ""))) for m in _models(tags) for key in ("name", "model")}
        available.discard(":latest")
        if _canonical(self.model) not in available:
            listed = ", ".join(sorted(available)) or "none"
            raise InfrastructureError(
                f"the Ollama server at {safe_url(self.base)} has no model {self.model!r} "
                f"(it has: {listed}); run `ollama pull {self.model}` or choose one with --ollama-model")

    def caption(self, jpeg: bytes, prompt: str) -> Answer:
        payload = {"model": self.model, "prompt": prompt, "images": [base64.b64encode(jpeg).decode("ascii")],
                   "stream": False, "options": {"num_predict": self.max_tokens}}
        answer = request_json(self.url, payload, self.timeout, self._headers)
        text = answer.get("response") if isinstance(answer, dict) else None
        if not isinstance(text, str):
            error = answer.get("error") if isinstance(answer, dict) else None
            raise RequestFailure("bad_response", "Ollama answered without a response text"
                                 + (f": {error}" if error else ""))
        return Answer(text, truncated=answer.get("done_reason") == "length")  # num_predict reached


def _models(tags: object) -> list[dict]:
    models = tags.get("models") if isinstance(tags, dict) else None
    if not isinstance(models, list):
        raise InfrastructureError("the Ollama server answered /api/tags without a model list; "
                                  "is --ollama-url really an Ollama server?")
    return [m for m in models if isinstance(m, dict)]
