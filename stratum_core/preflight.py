"""Before a run: which passes can run here, and for the others exactly what to fetch or start."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from stratum_core.errors import StratumError
from stratum_core.passes.base import Pass


@dataclass(frozen=True)
class Readiness:
    pass_name: str
    ready: bool
    advice: str = ""  # what to fetch or start when not ready


def check_pass(p: Pass) -> Readiness:
    """Dependencies importable, weights present locally, server answering (for server-bound passes)."""
    try:
        p.check_requirements()
        if p.model is not None:
            offline = dataclasses.replace(p.options, offline=True)  # look, never download here
            type(p)(offline, p.config).resolve_weights()
        if p.io_bound:
            p.load()  # a server-bound pass checks its server (and model) here, cheaply
            p.close()
    except StratumError as exc:
        return Readiness(p.name, False, _advice(p, str(exc)))
    return Readiness(p.name, True)


def _advice(p: Pass, message: str) -> str:
    if p.model is not None and "not found" in message:
        return (f"weights missing ({p.model.hub_id}): run `stratum models download --passes {p.name}` "
                f"(or put them under $STRATUM_MODEL_DIR/{p.model.hub_id}/)")
    return message

