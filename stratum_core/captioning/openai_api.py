"""OpenAI-compatible backend (vLLM, llama.cpp server, LM Studio): /v1/chat/completions with an image part."""

from __future__ import annotations

import base64

from stratum_core.captioning.client import Answer, CaptionClient, RequestFailure, request_json, safe_url
from stratum_core.errors import InfrastructureError

DEFAULT_OPENAI_URL = "http://localhost:8000/v1"
CHECK_TIMEOUT = 10.0


def openai_base(url: str) -> str:
    """`http://h:8000/v1/chat/completions`, `http://h:8000/v1` or `http://h:8000` → `http://h:8000/v1`."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        url = url[: -len("/chat/completions")]
    scheme_and_host = url.split("://", 1)[-1]
    return url if "/" in scheme_and_host else url + "/v1"


class OpenAIClient(CaptionClient):
    endpoint = "/chat/completions"
    base_url = staticmethod(openai_base)

    def check(self) -> None:
        try:
            listing = request_json(self.base + "/models", None, min(self.timeout, CHECK_TIMEOUT), self._headers)
        except RequestFailure as failure:
            hint = " (check the API key variable)" if failure.reason == "client_error" else ""
            raise InfrastructureError(
                f"the OpenAI-compatible server at {safe_url(self.base)} does not answer ({failure.message}){hint}; "
                f"point --caption-url at its /v1 base") from None
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            raise InfrastructureError(f"{safe_url(self.base)}/models answered without a model list")
        available = sorted(str(m.get("id")) for m in data if isinstance(m, dict))
        if self.model not in available:
            raise InfrastructureError(
                f"the server at {safe_url(self.base)} does not serve model {self.model!r} "
                f"(it has: {', '.join(available) or 'none'}); choose one with --caption-model")

    def caption(self, jpeg: bytes, prompt: str) -> Answer:
        image_url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
        payload = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "stream": False,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": image_url}},
            ]}],
        }
        answer = request_json(self.url, payload, self.timeout, self._headers)
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RequestFailure("bad_response", "the server answered without choices[0].message.content") from None
        if text is None:
            return Answer("")
        if not isinstance(text, str):
            raise RequestFailure("bad_response", f"message content is {type(text).__name__}, not text")
        return Answer(text, truncated=choice.get("finish_reason") == "length")  # max_tokens reached
