"""The pass registry: pass name → implementing class, in dependency order."""

from __future__ import annotations

import importlib
from typing import Any, Iterable, Mapping

from stratum_core.errors import ConfigError
from stratum_core.passes.base import Pass, PassOptions

# name → "module:Class". Order is dependency order (caption before t5, seg before depth/normal).
REGISTRY: dict[str, str] = {
    "metadata": "stratum_core.passes.metadata:MetadataPass",
    "caption": "stratum_core.passes.caption:CaptionPass",
    "dinov3": "stratum_core.passes.dinov3:DINOv3Pass",
    "t5": "stratum_core.passes.t5:T5Pass",
    "pose": "stratum_core.passes.dwpose:DWPosePass",
    "seg": "stratum_core.passes.sapiens:SapiensSegPass",
    "depth": "stratum_core.passes.sapiens:SapiensDepthPass",
    "normal": "stratum_core.passes.sapiens:SapiensNormalPass",
    "pixel": "stratum_core.passes.pixel:PixelPass",
}

class PassUnavailable(ConfigError):
    """A pass that is named but not implemented in this build."""


def pass_class(name: str) -> type[Pass]:
    if name not in REGISTRY:
        raise ConfigError(f"unknown pass {name!r}; choose from {', '.join(REGISTRY)} or 'all'")
    module_name, class_name = REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise PassUnavailable(f"the {name} pass is not available in this version of stratum") from exc
        raise
    return getattr(module, class_name)


# Read from the pass classes (importing them is cheap: models load in `load`, torch lazily).
DEFAULT_PASSES: tuple[str, ...] = tuple(n for n in REGISTRY if pass_class(n).default)  # `--passes all`
MODEL_PASSES: tuple[str, ...] = tuple(n for n in REGISTRY if pass_class(n).model is not None)
OPT_IN_PASSES: tuple[str, ...] = tuple(n for n in REGISTRY if n != "metadata" and n not in DEFAULT_PASSES)


def passes_help() -> str:
    """The `--passes` help, from the registry."""
    opt_in = ", ".join(repr(n) for n in OPT_IN_PASSES)
    return f"comma-separated passes, or 'all' ({','.join(DEFAULT_PASSES)}); {opt_in} only when named"


def upstream_passes(name: str) -> list[str]:
    """Passes whose artifacts `name` reads (t5 → caption, depth/normal → seg)."""
    from stratum_core.artifacts import BY_NAME

    return list(dict.fromkeys(BY_NAME[n].pass_name for n in pass_class(name).reads))


def parse_passes(spec: str | Iterable[str]) -> tuple[str, ...]:
    """`"all"`, `"caption,t5"` or a list → validated names in dependency order (metadata always first)."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    expanded: list[str] = []
    for n in names:
        expanded.extend(DEFAULT_PASSES if n == "all" else (n,))
    unknown = [n for n in expanded if n not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown pass {', '.join(map(repr, unknown))}; "
                          f"choose from {', '.join(REGISTRY)} or 'all'")
    if not expanded:
        raise ConfigError("no passes given")
    wanted = set(expanded) | {"metadata"}
    return tuple(n for n in REGISTRY if n in wanted)


def build_passes(names: Iterable[str], options: PassOptions,
                 configs: Mapping[str, Any] | None = None) -> list[Pass]:
    """Instantiate passes (no model loading happens here)."""
    configs = configs or {}
    return [pass_class(n)(options, configs.get(n)) for n in names]
