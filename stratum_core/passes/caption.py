"""The caption pass: one dense paragraph per image from an Ollama or OpenAI-compatible vision server.

The server is checked in `load()` (an unreachable server or a missing model stops the run
before any image is sent); during the run each request is retried with backoff and a
request that still fails is one failed image, never a stopped run. `concurrency`
requests are in flight at once; the engine overlaps batches so that number holds
across batch boundaries.
"""

from __future__ import annotations

import argparse
import logging
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from stratum_core.captioning.cleaning import MAX_CAPTION_CHARS, cap_caption, clean_caption
from stratum_core.captioning.client import Answer, CaptionClient, RequestFailure, safe_url
from stratum_core.captioning.jpeg import JPEG_QUALITY, encode_jpeg
from stratum_core.captioning.ollama import DEFAULT_OLLAMA_MODEL, DEFAULT_OLLAMA_URL, OllamaClient
from stratum_core.captioning.openai_api import DEFAULT_OPENAI_URL, OpenAIClient
from stratum_core.captioning.prompt import DEFAULT_PROMPT
from stratum_core.captioning.retry import RetryPolicy, call_with_retries
from stratum_core.errors import ConfigError
from stratum_core.outcomes import OK, Outcome
from stratum_core.passes.base import Item, Pass

log = logging.getLogger("stratum.caption")

TRUNCATED_POLICIES = ("keep", "fail")
BACKENDS: dict[str, Callable[..., CaptionClient]] = {"ollama": OllamaClient, "openai": OpenAIClient}
DEFAULT_URLS = {"ollama": DEFAULT_OLLAMA_URL, "openai": DEFAULT_OPENAI_URL}
API_KEY_VARIABLES = {"ollama": ("STRATUM_CAPTION_API_KEY",), "openai": ("STRATUM_CAPTION_API_KEY", "OPENAI_API_KEY")}


def api_key_from(environ: Mapping[str, str], backend: str) -> str | None:
    """The bearer token for `backend` from the first of its variables that is set (CLI and Dagster alike)."""
    return next((environ[v] for v in API_KEY_VARIABLES.get(backend, ()) if environ.get(v)), None)


@dataclass(frozen=True)
class CaptionConfig:
    """Caption settings. `url`/`model` None mean the backend's default; `api_key` never appears in repr."""

    backend: str = "ollama"
    url: str | None = None
    model: str | None = None
    max_tokens: int = 512
    concurrency: int = 4
    timeout: float = 120.0
    retries: int = 3
    prompt: str = DEFAULT_PROMPT
    prompt_file: str | None = None  # where `prompt` came from, for provenance
    api_key: str | None = field(default=None, repr=False, compare=False)
    backoff_base: float = 1.0  # seconds; the n-th retry waits up to backoff_base · 2ⁿ (full jitter)
    backoff_max: float = 30.0
    jpeg_quality: int = JPEG_QUALITY
    on_truncated: str = "keep"  # a caption cut at the token or size limit: "keep" it (counted) or "fail" it

    def __post_init__(self) -> None:
        if self.on_truncated not in TRUNCATED_POLICIES:
            raise ConfigError(f"--caption-truncated must be one of {', '.join(TRUNCATED_POLICIES)}, "
                              f"got {self.on_truncated!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--caption-backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "openai" and not self.model:
            raise ConfigError("--caption-backend openai needs --caption-model (a model id the server lists "
                              "under /v1/models)")
        for name, value, low in (("--caption-max-tokens", self.max_tokens, 1),
                                 ("--caption-concurrency", self.concurrency, 1),
                                 ("--caption-retries", self.retries, 0)):
            if value < low:
                raise ConfigError(f"{name} must be at least {low}, got {value}")
        if self.timeout <= 0 or self.backoff_base < 0 or self.backoff_max < 0:
            raise ConfigError("--caption-timeout must be positive and backoff delays not negative")
        if not 90 <= self.jpeg_quality <= 100:
            raise ConfigError(f"JPEG quality must be in 90..100, got {self.jpeg_quality}")
        if not self.prompt.strip():
            raise ConfigError("the caption prompt is empty")

    @property
    def resolved_url(self) -> str:
        return self.url or DEFAULT_URLS[self.backend]

    @property
    def resolved_model(self) -> str:
        return self.model or DEFAULT_OLLAMA_MODEL


# Reasons that mean "no answer from the server" rather than "a bad answer for this image".
TRANSPORT_REASONS = frozenset({"server_error", "timeout"})


class CaptionPass(Pass):
    name = "caption"
    default = True
    version = "1"
    io_bound = True
    config_class = CaptionConfig

    def __init__(self, options, config: CaptionConfig | None = None):
        super().__init__(options, config)
        self._client: CaptionClient | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._policy = RetryPolicy(self.config.retries, self.config.backoff_base, self.config.backoff_max)
        self._rng = random.Random()

    # ------------------------------------------------------------------ options
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("caption pass")
        group.add_argument("--caption-backend", choices=tuple(BACKENDS), default="ollama",
                           help="ollama (default) or openai (any OpenAI-compatible server: vLLM, llama.cpp, "
                                "LM Studio)")
        group.add_argument("--caption-url", default=None,
                           help=f"server URL for the chosen backend (openai default {DEFAULT_OPENAI_URL}; "
                                "for ollama the same as --ollama-url)")
        group.add_argument("--ollama-url", default=DEFAULT_OLLAMA_URL,
                           help=f"Ollama generate endpoint (default {DEFAULT_OLLAMA_URL})")
        group.add_argument("--ollama-model", default=DEFAULT_OLLAMA_MODEL,
                           help=f"Ollama model (default {DEFAULT_OLLAMA_MODEL})")
        group.add_argument("--caption-model", default=None,
                           help="model name for the chosen backend (required for openai; overrides "
                                "--ollama-model)")
        group.add_argument("--caption-max-tokens", type=int, default=CaptionConfig.max_tokens,
                           help=f"most tokens per caption (default {CaptionConfig.max_tokens})")
        group.add_argument("--caption-concurrency", type=int, default=CaptionConfig.concurrency,
                           help=f"caption requests in flight (default {CaptionConfig.concurrency})")
        group.add_argument("--caption-timeout", type=float, default=CaptionConfig.timeout,
                           help=f"seconds to wait for one answer (default {CaptionConfig.timeout:g})")
        group.add_argument("--caption-retries", type=int, default=CaptionConfig.retries,
                           help=f"retries per image after a transient failure (default {CaptionConfig.retries})")
        group.add_argument("--caption-backoff", type=float, default=CaptionConfig.backoff_base,
                           help="seconds of the first retry's backoff; the n-th waits up to this · 2ⁿ, "
                                f"with jitter (default {CaptionConfig.backoff_base:g})")
        group.add_argument("--caption-truncated", choices=TRUNCATED_POLICIES, default="keep",
                           help="a caption cut at --caption-max-tokens (or at the stored limit of "
                                f"{MAX_CAPTION_CHARS} characters): keep it, counted as 'truncated' in the run "
                                "record (default), or fail the image")
        group.add_argument("--caption-prompt-file", type=Path, default=None,
                           help="UTF-8 text file whose content replaces the built-in caption prompt")

    @classmethod
    def config_from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> CaptionConfig:
        backend = args.caption_backend
        url = args.caption_url or (args.ollama_url if backend == "ollama" else None)
        model = args.caption_model or (args.ollama_model if backend == "ollama" else None)
        prompt, prompt_file = DEFAULT_PROMPT, None
        if args.caption_prompt_file is not None:
            prompt, prompt_file = read_prompt_file(args.caption_prompt_file), str(args.caption_prompt_file)
        api_key = api_key_from(environ, backend)
        return CaptionConfig(backend=backend, url=url, model=model, max_tokens=args.caption_max_tokens,
                             concurrency=args.caption_concurrency, timeout=args.caption_timeout,
                             retries=args.caption_retries, backoff_base=args.caption_backoff, prompt=prompt,
                             prompt_file=prompt_file, api_key=api_key,
                             on_truncated=getattr(args, "caption_truncated", "keep"))

    # ------------------------------------------------------------------ lifecycle
    @property
    def concurrency(self) -> int:
        return self.config.concurrency

    @property
    def max_batch(self) -> int:
        # forward hands every item to the request pool at once; chunking would only add waits.
        return 1 << 16

    def make_client(self) -> CaptionClient:
        c = self.config
        return BACKENDS[c.backend](c.resolved_url, c.resolved_model, c.max_tokens, c.timeout, c.api_key)

    def load(self) -> None:
        """Check that the server answers and has the model (InfrastructureError otherwise); start the pool."""
        if self._client is not None:
            return
        client = self.make_client()
        client.check()
        log.info("captioning with %s at %s, %d in flight", client.model, safe_url(client.url),
                 self.config.concurrency)
        self._client = client
        self._pool = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="stratum-caption")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        self._client = None

    # ------------------------------------------------------------------ work
    def preprocess(self, item: Item) -> bytes:
        return encode_jpeg(item.crop, self.config.jpeg_quality)

    def forward(self, batch: list[bytes]) -> list[Answer | RequestFailure]:
        """Each JPEG → its cleaned caption, or the RequestFailure that ended its retries."""
        if self._pool is None:
            raise RuntimeError("CaptionPass.forward before load()")
        futures = [self._pool.submit(self._caption_with_retries, jpeg) for jpeg in batch]
        results = [f.result() for f in futures]
        if results and all(isinstance(r, RequestFailure) and r.reason in TRANSPORT_REASONS for r in results):
            # A whole batch lost after its retries: if the server itself is gone, that is an
            # infrastructure error (stop, let the orchestrator retry), not one failure per image.
            self._client.check()
        return results

    def postprocess(self, outputs: list[Answer | RequestFailure], items: Sequence[Item]) -> list[Outcome]:
        return [self._outcome(o) for o in outputs]

    def _outcome(self, output: Answer | RequestFailure) -> Outcome:
        """A cleaned answer → ok (noted "truncated" when cut), or failed under --caption-truncated fail."""
        if isinstance(output, RequestFailure):
            return Outcome.failed(output.reason, output.message)
        if not output.truncated:
            return Outcome.ok(caption=output.text)
        if self.config.on_truncated == "fail":
            return Outcome.failed("truncated", f"the caption was cut at the limit (--caption-max-tokens "
                                               f"{self.config.max_tokens}, {MAX_CAPTION_CHARS} characters stored)")
        return Outcome(OK, {"caption": output.text}, note="truncated")

    def _caption_with_retries(self, jpeg: bytes) -> Answer | RequestFailure:
        try:
            return call_with_retries(lambda: self._caption_once(jpeg), self._policy, self._rng)
        except RequestFailure as failure:
            return failure
        except Exception as exc:  # a client bug fails this image, not the run
            return RequestFailure("inference_error", f"{type(exc).__name__}: {exc}")

    def _caption_once(self, jpeg: bytes) -> Answer:
        answer = self._client.caption(jpeg, self.config.prompt)
        text, cut = cap_caption(clean_caption(answer.text))
        if not text:
            raise RequestFailure("empty_result", "the model answered an empty caption")
        return Answer(text, truncated=answer.truncated or cut)

    def provenance(self) -> dict[str, Any]:
        c = self.config
        return {"pass": self.name, "version": self.version, "backend": c.backend,
                "url": safe_url(c.resolved_url), "model": c.resolved_model, "prompt": c.prompt,
                "prompt_file": c.prompt_file, "max_tokens": c.max_tokens, "jpeg_quality": c.jpeg_quality,
                "max_caption_chars": MAX_CAPTION_CHARS, "on_truncated": c.on_truncated}


def read_prompt_file(path: Path) -> str:
    """The prompt text of `--caption-prompt-file`; ConfigError if unreadable or blank."""
    try:
        prompt = path.expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --caption-prompt-file {path}: {exc}") from exc
    if not prompt:
        raise ConfigError(f"--caption-prompt-file {path} is empty")
    return prompt
