"""The caption client interface and the JSON-over-HTTP helper that sorts failures into closed-set reasons.

Only the standard library is used (urllib), so captioning adds no dependency.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Mapping

# HTTP statuses worth asking again: rate limiting and server-side faults. Every other 4xx
# (408 included) is not retried (issue 6: "4xx other than 429 are not retried").
RETRYABLE_STATUS = frozenset({429}) | frozenset(range(500, 600))

_CHUNK = 64 * 1024  # bytes per body read; the deadline is checked between reads


class RequestFailure(Exception):
    """One caption request failed; `reason` is a closed-set outcome reason (server_error, timeout, ...)."""

    def __init__(self, reason: str, message: str, retryable: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after  # seconds the server asked us to wait (429 Retry-After)


@dataclass(frozen=True)
class Answer:
    """A model's raw caption text; `truncated`: the server stopped it at the token limit."""

    text: str
    truncated: bool = False


class CaptionClient:
    """A captioning server: `check()` before the run, then `caption()` per image (thread-safe).

    Subclasses say how a user's URL maps to the API base (`base_url`) and which endpoint
    captions (`endpoint`); the key only ever travels in `_headers`, never in repr or logs.
    """

    endpoint: str = ""

    def __init__(self, url: str, model: str, max_tokens: int, timeout: float, api_key: str | None = None):
        self.base = self.base_url(url)
        self.url = self.base + self.endpoint
        self.model = model
        self.max_tokens = max_tokens
        self.timeout = timeout
        self._headers = auth_headers(api_key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({safe_url(self.url)!r}, model={self.model!r})"

    @staticmethod
    def base_url(url: str) -> str:
        return url.rstrip("/")

    def check(self) -> None:
        """Raise InfrastructureError with a clear message if the server is down or lacks the model."""
        raise NotImplementedError

    def caption(self, jpeg: bytes, prompt: str) -> Answer:
        """The raw answer of the model for one JPEG; raises RequestFailure."""
        raise NotImplementedError


def request_json(url: str, payload: Mapping[str, Any] | None, timeout: float,
                 headers: Mapping[str, str] | None = None) -> Any:
    """GET (payload None) or POST JSON to `url` and return the decoded JSON body; raises RequestFailure.

    `timeout` bounds the whole request, not just each socket operation (urllib's own timeout),
    so a server that trickles its answer still times out.
    """
    deadline = time.monotonic() + timeout
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = _read_body(response, deadline)
    except urllib.error.HTTPError as exc:
        raise _http_failure(exc) from None
    except (TimeoutError, socket.timeout) as exc:
        raise _timeout(url, timeout) from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (TimeoutError, socket.timeout)):
            raise _timeout(url, timeout) from exc
        raise RequestFailure("server_error", f"cannot reach {safe_url(url)}: {exc.reason}") from exc
    except (ConnectionError, http.client.HTTPException, OSError) as exc:
        raise RequestFailure("server_error", f"{safe_url(url)}: {type(exc).__name__}: {exc}") from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise RequestFailure("bad_response", f"{safe_url(url)} answered invalid JSON: {body[:120]!r}") from exc


def _read_body(response: http.client.HTTPResponse, deadline: float) -> bytes:
    """The whole body, read piece by piece; TimeoutError once `deadline` (time.monotonic()) passes."""
    chunks = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed while reading the answer")
        _limit_next_read(response, remaining)
        chunk = response.read1(_CHUNK)  # returns after one recv, however few bytes arrived
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _limit_next_read(response: http.client.HTTPResponse, seconds: float) -> None:
    """Let the next socket read wait only until the deadline, not a whole per-operation timeout.

    http.client exposes no public handle on its socket; without one, the deadline is still
    checked between reads, so a request overruns it by one read's timeout at most.
    """
    sock = getattr(getattr(response.fp, "raw", None), "_sock", None)
    if isinstance(sock, socket.socket):
        sock.settimeout(seconds)


def _timeout(url: str, timeout: float) -> RequestFailure:
    return RequestFailure("timeout", f"no complete answer from {safe_url(url)} within {timeout:g} s")


def _http_failure(exc: urllib.error.HTTPError) -> RequestFailure:
    try:
        detail = exc.read(300).decode("utf-8", "replace").strip()
    except Exception:  # the body is only for the message
        detail = ""
    message = f"HTTP {exc.code} from {safe_url(exc.url or '')}" + (f": {detail}" if detail else "")
    if exc.code in RETRYABLE_STATUS:
        return RequestFailure("server_error", message, retry_after=_retry_after(exc.headers))
    return RequestFailure("client_error", message, retryable=False)


def _retry_after(headers: Any) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After"))) if headers is not None else None
    except (TypeError, ValueError):  # absent, or an HTTP date: fall back to our own backoff
        return None


def safe_url(url: str) -> str:
    """`url` without user:password, for messages and provenance."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
