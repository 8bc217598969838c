"""Error types: item errors fail one image, infrastructure errors stop the run."""

from __future__ import annotations


class StratumError(Exception):
    """Base class for errors stratum reports to the user with a clear message."""

    # The run summary when the error stopped a run that had started (set by `engine.run`, which has
    # saved it as the run record): the CLI prints it before the error.
    summary = None


class ConfigError(StratumError):
    """Invalid options, detected before any work starts."""


class InfrastructureError(StratumError):
    """Something every image needs is broken (server down, weights missing, GPU gone)."""


class ModelNotFoundError(InfrastructureError):
    """Model weights could not be found locally and could not be downloaded."""


class WeightsMissingError(ModelNotFoundError):
    """The weights are in none of the places looked (not an explicit path lacking files, not a gated model):
    the case `stratum models download` fixes."""


class ItemError(StratumError):
    """One image cannot be processed; the run goes on with the others.

    `reason` is one of the closed set in `stratum_core.outcomes.REASONS`.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure on the device, however the framework reports it.

    torch raises OutOfMemoryError, but a TorchScript model (Sapiens) re-raises it as a plain
    RuntimeError with the original text; onnxruntime raises RuntimeException / Fail errors
    ("Failed to allocate memory", "CUDA failure 2: out of memory").
    """
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "failed to allocate memory" in text


class RunInterrupted(StratumError):
    """A run stopped cleanly on request (SIGINT, SIGTERM, `StopRequest.request`).

    Raised by `engine.run` after the writes in flight are finished and the run record is saved;
    `summary` is that record (what was done and what is left: re-running resumes), `exit_code`
    is 130 for SIGINT and 143 for SIGTERM.
    """

    def __init__(self, reason: str, exit_code: int, summary=None):
        super().__init__(f"stopped: {reason}; re-run the same command to resume")
        self.reason = reason
        self.exit_code = exit_code
        self.summary = summary
