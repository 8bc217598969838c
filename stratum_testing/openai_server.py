"""A fake OpenAI-compatible server on 127.0.0.1: /v1/models and /v1/chat/completions.

    fake = FakeOpenAI(models=["qwen-vl"], api_key="sk-test", captions="A cat.")
    with fake as url:                      # url = "http://127.0.0.1:PORT"; the API base is url + "/v1"
        ...
    fake.headers[-1]["Authorization"] == "Bearer sk-test"
"""

from __future__ import annotations

from stratum_testing.caption_server import FakeCaptionServer


class FakeOpenAI(FakeCaptionServer):
    routes = {("GET", "/v1/models"): "list_models", ("POST", "/v1/chat/completions"): "chat"}

    def list_models(self, body: dict) -> tuple[int, dict]:
        return 200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"}
                                                for m in self.models]}

    def chat(self, body: dict) -> tuple[int, object]:
        if body.get("model") not in self.models:
            return 404, {"error": {"message": f"model {body.get('model')} does not exist"}}
        return self.generate(body)

    def wrap_caption(self, text: str) -> dict:
        return {"id": "chatcmpl-fake", "object": "chat.completion", "model": self.models[0],
                "choices": [{"index": 0, "finish_reason": "length" if self.truncated else "stop",
                             "message": {"role": "assistant", "content": text}}]}

    @property
    def base_url(self) -> str:
        return self.url + "/v1"
