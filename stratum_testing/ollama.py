"""A fake Ollama server on 127.0.0.1: /api/tags and /api/generate, with latency, faults and counters.

    fake = FakeOllama(captions="The image shows a cat.", latency=0.05, faults=[500, 500])
    with fake as url:                      # url = "http://127.0.0.1:PORT"
        ... --ollama-url f"{url}/api/generate" ...
    fake.requests[0]["model"], fake.max_in_flight
"""

from __future__ import annotations

from stratum_testing.caption_server import FakeCaptionServer


class FakeOllama(FakeCaptionServer):
    routes = {("GET", "/api/tags"): "tags", ("POST", "/api/generate"): "generate_route"}

    def tags(self, body: dict) -> tuple[int, dict]:
        return 200, {"models": [{"name": m, "model": m, "size": 1, "details": {"family": "fake"}}
                                for m in self.models]}

    def generate_route(self, body: dict) -> tuple[int, object]:
        if body.get("model") not in self.models:
            return 404, {"error": f"model '{body.get('model')}' not found"}
        return self.generate(body)

    def wrap_caption(self, text: str) -> dict:
        return {"model": self.models[0] if self.models else "", "response": text, "done": True,
                "done_reason": "length" if self.truncated else "stop"}

    @property
    def generate_url(self) -> str:
        return self.url + "/api/generate"
