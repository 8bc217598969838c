"""Exponential backoff with full jitter for caption requests."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from stratum_core.captioning.client import RequestFailure

log = logging.getLogger("stratum.caption")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` extra attempts after the first; delay n is uniform in [0, min(max_delay, base_delay·2ⁿ)]."""

    retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based); a server's Retry-After is a floor."""
        jittered = rng.uniform(0.0, min(self.max_delay, self.base_delay * (2 ** attempt)))
        return max(jittered, min(retry_after, self.max_delay)) if retry_after else jittered


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy, rng: random.Random | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """Call `fn` until it succeeds, raises a non-retryable RequestFailure, or the retries run out."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        try:
            return fn()
        except RequestFailure as failure:
            if not failure.retryable or attempt >= policy.retries:
                raise
            wait = policy.delay(attempt, rng, failure.retry_after)
            log.debug("caption request failed (%s: %s); retry %d in %.2f s",
                      failure.reason, failure.message, attempt + 1, wait)
            sleep(wait)
            attempt += 1
