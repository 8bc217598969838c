"""Before a run: which passes can run here, and for the others exactly what to fetch or start."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from stratum_core.errors import ModelNotFoundError, StratumError, WeightsMissingError
from stratum_core.passes import upstream_passes
from stratum_core.passes.base import Pass


@dataclass(frozen=True)
class Readiness:
    pass_name: str
    ready: bool
    advice: str = ""  # what to fetch or start when not ready

    def line(self) -> str:
        """`dinov3: weights missing (…) — stratum models download --passes dinov3 …`"""
        return f"{self.pass_name}: {self.advice}"


def check_pass(p: Pass, *, download: bool = False) -> Readiness:
    """Dependencies importable, weights present (locally; with `download`, fetched when the pass's own
    options allow it), server answering (for server-bound passes)."""
    try:
        p.check_requirements()
    except StratumError as exc:
        return Readiness(p.name, False, str(exc))
    if p.model is not None:
        try:
            try:
                offline = dataclasses.replace(p.options, offline=True)  # look first, never download here
                type(p)(offline, p.config).resolve_weights()
            except ModelNotFoundError:
                if not download or p.options.offline:
                    raise
                type(p)(p.options, p.config).resolve_weights()  # what load() would do: the cache keeps it
        except ModelNotFoundError as exc:
            return Readiness(p.name, False, _weights_advice(p, exc))
        except StratumError as exc:
            return Readiness(p.name, False, str(exc))
    if p.io_bound:
        try:
            p.load()  # a server-bound pass checks its server (and model) here, cheaply
        except StratumError as exc:
            return Readiness(p.name, False, str(exc))
        finally:
            p.close()
    return Readiness(p.name, True)


def check_passes(passes: Sequence[Pass], *, download: bool = False) -> list[Readiness]:
    """check_pass for each pass, in order; a pass whose upstream pass (in the same list) cannot run cannot
    run either (depth without seg), and is reported with that cause."""
    results: dict[str, Readiness] = {}
    for p in passes:
        blocked = [u for u in upstream_passes(p.name) if u in results and not results[u].ready]
        if blocked:
            results[p.name] = Readiness(p.name, False, f"needs {', '.join(blocked)}, which cannot run here")
        else:
            results[p.name] = check_pass(p, download=download)
    return list(results.values())


def setup_problems(readiness: Sequence[Readiness]) -> str:
    """Every pass that cannot run, one line each: the message of a run that stops before any work."""
    blocked = [r for r in readiness if not r.ready]
    return "\n".join(f"  {r.line()}" for r in blocked)


def _weights_advice(p: Pass, exc: ModelNotFoundError) -> str:
    """`weights missing (<hub id>) — stratum models download --passes <name> (looked in …)`."""
    if not isinstance(exc, WeightsMissingError):
        return str(exc)  # an explicit --model path that does not hold the files, or a gated model: say exactly that
    from stratum_core.models import candidate_dirs, hf_cache_folder

    looked = [str(d) for d in candidate_dirs(p.model, p.options.model_dir)] or ["$STRATUM_MODEL_DIR (not set)"]
    return (f"weights missing ({p.model.hub_id}) — stratum models download --passes {p.name} "
            f"(looked in {', '.join(looked)} and the HuggingFace cache {hf_cache_folder(None)})")
