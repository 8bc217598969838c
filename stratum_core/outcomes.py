"""Per-image, per-pass outcomes with a closed set of reasons (like img2dataset's status column)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

# Closed set of reasons for a failed or skipped (image, pass).
REASONS: dict[str, str] = {
    "decode_error": "the file could not be decoded as an image",
    "too_large": "the image exceeds the decompression-bomb limit",
    "id_collision": "two source files map to the same image id",
    "outside_input": "the path resolves outside the input directory",
    "not_found": "the listed file does not exist",
    "not_an_image": "the listed file does not have an image extension",
    "hidden": "the listed path has a hidden component (a name starting with '.')",
    "unreadable": "the entry cannot be read (a symlink loop, no permission)",
    "not_a_file": "named like an image but not a regular file (a FIFO, socket or device)",
    "bad_name": "the file name is not valid UTF-8",
    "missing_input": "an artifact this pass needs is missing",
    "bad_input": "an artifact this pass needs is empty or unreadable",
    "empty_result": "the model returned an empty result",
    "server_error": "the model server failed after retries",
    "timeout": "the model server did not answer in time",
    "bad_response": "the model server answered with something unusable",
    "client_error": "the model server refused the request",
    "inference_error": "the model failed on this image",
    "write_error": "an artifact could not be written",
    "truncated": "the caption was cut at the token or size limit (with --caption-truncated fail)",
}

OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass(frozen=True)
class Outcome:
    """What one pass did to one image: `values` maps artifact name → array or text."""

    status: str
    values: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None
    message: str = ""
    note: str = ""  # a success worth counting in the run record (e.g. "truncated"), "" for none

    def __post_init__(self) -> None:
        if self.status not in (OK, FAILED, SKIPPED):
            raise ValueError(f"unknown status {self.status!r}")
        if self.status != OK and self.reason not in REASONS:
            raise ValueError(f"unknown reason {self.reason!r}")

    @classmethod
    def ok(cls, **values: Any) -> Outcome:
        return cls(OK, values)

    @classmethod
    def failed(cls, reason: str, message: str) -> Outcome:
        return cls(FAILED, reason=reason, message=message)

    @classmethod
    def skipped(cls, reason: str, message: str) -> Outcome:
        return cls(SKIPPED, reason=reason, message=message)


class CappedCounter(Counter):
    """A Counter that stops adding new keys past `cap` distinct ones (keeps memory bounded)."""

    def __init__(self, cap: int = 50):
        super().__init__()
        self.cap = cap

    def add(self, key: str) -> None:
        if key in self or len(self) < self.cap:
            self[key] += 1
        else:
            self["<other>"] += 1
