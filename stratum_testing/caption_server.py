"""The loopback HTTP machinery shared by the fake Ollama and fake OpenAI servers.

A fake binds 127.0.0.1 on a free port, answers in its own threads, counts requests in
flight, records every request body, and plays a script of faults before answering
normally. Subclasses only say which paths exist and how a caption is wrapped.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Sequence, Union

# A fault is an HTTP status (500, 429, 404, ...), "hang" (no answer until the server stops),
# "bad_json" (200 with a body that is not JSON), "empty" (a valid answer with empty text),
# "drop" (close the connection without answering) or "trickle" (a valid answer sent one byte
# every `trickle_interval` seconds, so no single read waits long but the whole answer does).
Fault = Union[int, str]
Captions = Union[str, Sequence[str], Callable[[dict], str]]
FAULTS = ("hang", "bad_json", "empty", "drop", "trickle")


class FakeCaptionServer:
    """Base of the fakes; use as `with Fake(...) as url:` (url has no trailing slash)."""

    def __init__(self, models: Iterable[str] = ("gemma3:27b",), captions: Captions = "A red cube on a table.",
                 latency: float = 0.0, faults: Sequence[Fault] = (), always: Fault | None = None,
                 hang_seconds: float = 30.0, api_key: str | None = None, retry_after: str | None = None,
                 trickle_interval: float = 0.2, truncated: bool = False):
        for fault in [*faults, *([always] if always is not None else [])]:
            if not (isinstance(fault, int) or fault in FAULTS):
                raise ValueError(f"unknown fault {fault!r}")
        self.models = list(models)
        self.captions = captions
        self.latency = latency
        self.faults = list(faults)  # played in order by the first generate requests
        self.always = always  # played by every generate request after `faults`
        self.hang_seconds = hang_seconds
        self.trickle_interval = trickle_interval
        self.truncated = truncated  # answers say they stopped at the token limit (done/finish reason "length")
        self.api_key = api_key  # when set, requests without "Bearer <api_key>" get 401
        self.retry_after = retry_after  # Retry-After header sent with 429
        self.requests: list[dict] = []  # generate bodies, in arrival order
        self.headers: list[dict[str, str]] = []  # headers of every request (all paths)
        self.in_flight = 0
        self.max_in_flight = 0
        self.first_request_at: float | None = None  # time.monotonic() of the first generate request
        self.last_answer_at: float | None = None  # ... and of the last answer, for throughput windows
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._caption_counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> str:
        self.start()
        return self.url

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-caption-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()  # wakes hanging handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def generate_count(self) -> int:
        return len(self.requests)

    # ------------------------------------------------------------------ subclass hooks
    routes: dict[tuple[str, str], str] = {}  # (method, path) → method name taking (body) → (status, payload)

    def wrap_caption(self, text: str) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------------ generation
    def generate(self, body: dict) -> tuple[int, Any]:
        """Play the next fault or answer with the next caption (after `latency`); counts in-flight requests."""
        with self._lock:
            index = len(self.requests)
            self.requests.append(body)
            if self.first_request_at is None:
                self.first_request_at = time.monotonic()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            fault = self.faults[index] if index < len(self.faults) else self.always
            if fault == "hang":
                self._stop.wait(self.hang_seconds)
                return 0, None
            if self.latency:
                self._stop.wait(self.latency)
            if isinstance(fault, int):
                return fault, {"error": f"fake failure {fault}"}
            if fault in ("bad_json", "drop"):
                return 0, fault
            if fault == "trickle":
                return 0, _Trickle(self.wrap_caption(self.next_caption(body)))
            return 200, self.wrap_caption("" if fault == "empty" else self.next_caption(body))
        finally:
            # Counted out before the answer is written, so a client that sends its next request
            # the moment it reads this answer never sees the count above its own limit.
            with self._lock:
                self.in_flight -= 1
                self.last_answer_at = time.monotonic()

    def next_caption(self, body: dict) -> str:
        if callable(self.captions):
            return self.captions(body)
        if isinstance(self.captions, str):
            return self.captions
        return self.captions[next(self._caption_counter) % len(self.captions)]


class _Trickle:
    """A generate answer the handler sends byte by byte."""

    def __init__(self, payload: Any):
        self.payload = payload


def _handler_for(fake: FakeCaptionServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def _route(self, method: str) -> None:
            with fake._lock:
                fake.headers.append(dict(self.headers.items()))
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if fake.api_key is not None and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                return self._send(401, {"error": "invalid api key"})
            name = fake.routes.get((method, self.path))
            if name is None:
                return self._send(404, {"error": f"no route {method} {self.path}"})
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                return self._send(400, {"error": "invalid JSON body"})
            status, payload = getattr(fake, name)(body)
            if status == 0 and payload == "bad_json":
                return self._send_raw(200, b"{this is not json")
            if status == 0 and isinstance(payload, _Trickle):
                return self._send_trickle(json.dumps(payload.payload).encode("utf-8"))
            if status == 0:  # hang or drop: close without an answer
                self.close_connection = True
                return None
            return self._send(status, payload)

        def _send(self, status: int, payload: Any) -> None:
            self._send_raw(status, json.dumps(payload).encode("utf-8"))

        def _send_trickle(self, data: bytes) -> None:
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.flush()
                for i in range(len(data)):
                    if fake._stop.wait(fake.trickle_interval):
                        break
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: what the test wants
                pass
            self.close_connection = True

        def _send_raw(self, status: int, data: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429 and fake.retry_after is not None:
                    self.send_header("Retry-After", fake.retry_after)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): nothing to do
                pass

    return Handler
