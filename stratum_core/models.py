"""Where model weights come from: explicit path → $STRATUM_MODEL_DIR/<hub id>/ → HF cache / download."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stratum_core.errors import ModelNotFoundError, WeightsMissingError


@dataclass(frozen=True)
class ModelSpec:
    """A model on the Hub. `files` empty means the whole repo (a transformers folder)."""

    hub_id: str
    files: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # older ids accepted in $STRATUM_MODEL_DIR and the HF cache ("t5-large")
    marker: str = "config.json"  # file that proves a folder model is present

    @property
    def required_files(self) -> tuple[str, ...]:
        return self.files or (self.marker,)


@dataclass(frozen=True)
class ModelLocation:
    """A resolved model: `root` is the folder; `files` maps each required file to its path."""

    spec: ModelSpec
    root: Path
    source: str  # "explicit" | "model_dir" | "hf_cache" | "download"

    def file(self, name: str) -> Path:
        return self.root / name


def _complete(folder: Path, spec: ModelSpec) -> bool:
    return all((folder / f).is_file() for f in spec.required_files)


def candidate_dirs(spec: ModelSpec, model_dir: Path | None) -> list[Path]:
    if model_dir is None:
        return []
    return [Path(model_dir) / hub_id for hub_id in (spec.hub_id, *spec.aliases)]


def resolve_model(spec: ModelSpec, *, explicit: Path | None = None, model_dir: Path | None = None,
                  offline: bool = False, cache_dir: Path | None = None) -> ModelLocation:
    """Find `spec` locally or download it; raise ModelNotFoundError naming where it looked."""
    if explicit is not None:
        explicit = Path(explicit)
        folder = explicit.parent if explicit.is_file() and len(spec.required_files) == 1 else explicit
        if explicit.is_file() and len(spec.required_files) == 1 and explicit.name != spec.required_files[0]:
            return ModelLocation(ModelSpec(spec.hub_id, (explicit.name,)), folder, "explicit")
        if _complete(folder, spec):
            return ModelLocation(spec, folder, "explicit")
        raise ModelNotFoundError(
            f"model {spec.hub_id}: {explicit} does not hold {', '.join(spec.required_files)}")
    looked = candidate_dirs(spec, model_dir)
    for folder in looked:
        if _complete(folder, spec):
            return ModelLocation(spec, folder, "model_dir")
    # A cache filled under the old id (`snapshot_download("t5-large")`) holds it as models--t5-large.
    for repo_id in (spec.hub_id, *spec.aliases):
        try:
            return ModelLocation(spec, _from_hf(spec, repo_id, cache_dir, local_only=True), "hf_cache")
        except _NotOnHub:
            continue
    failure = ""
    if not offline:
        try:
            return ModelLocation(spec, _from_hf(spec, spec.hub_id, cache_dir, local_only=False), "download")
        except _NotOnHub as exc:
            failure = f" The download failed: {str(exc).rstrip('.')}."
    cache = f"the HuggingFace cache {hf_cache_folder(cache_dir)}"
    where = (f"looked in {', '.join(str(p) for p in looked)} and {cache}" if looked
             else f"$STRATUM_MODEL_DIR is not set; looked in {cache}")
    raise WeightsMissingError(
        f"model {spec.hub_id} not found: {where}"
        f"{' (offline)' if offline else ''}.{failure} Fetch it with `stratum models download` "
        f"(or place {', '.join(spec.required_files)} under $STRATUM_MODEL_DIR/{spec.hub_id}/).")


def hf_cache_folder(cache_dir: Path | None) -> str:
    """The HF cache folder resolution reads: `cache_dir`, else huggingface_hub's HF_HUB_CACHE."""
    if cache_dir is not None:
        return str(cache_dir)
    try:
        from huggingface_hub import constants
    except ImportError:
        return "(huggingface_hub is not installed)"
    return str(constants.HF_HUB_CACHE)


class _NotOnHub(Exception):
    """The HF cache or the Hub did not give a complete copy of a model; the message says why."""


def _gated(spec: ModelSpec, exc: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {spec.hub_id} is gated on the Hub: accept its licence at https://huggingface.co/{spec.hub_id} "
        f"with your account and set HF_TOKEN (then `stratum models download`). The Hub said: {exc}")


def _from_hf(spec: ModelSpec, repo_id: str, cache_dir: Path | None, *, local_only: bool) -> Path:
    """`spec`'s files of Hub repo `repo_id` from the HF cache (`local_only`) or the Hub; _NotOnHub if not there."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as exc:
        raise _NotOnHub("huggingface_hub is not installed") from exc
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=list(spec.files) or None,
                                        cache_dir=cache_dir, local_files_only=local_only))
    except GatedRepoError as exc:
        raise _gated(spec, exc) from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        # A Hub error comes wrapped in "cannot find it in the cache either": the Hub's error is the cause.
        cause = exc.__cause__ if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ else exc
        raise _NotOnHub(f"{type(cause).__name__}: {' '.join(str(cause).split())}") from exc
    if not _complete(folder, spec):
        missing = [f for f in spec.required_files if not (folder / f).is_file()]
        raise _NotOnHub(f"the {'cached' if local_only else 'downloaded'} {repo_id} has no {', '.join(missing)}")
    return folder


def download_model(spec: ModelSpec, to: Path | None = None, cache_dir: Path | None = None) -> Path:
    """Fetch `spec` into `to/<hub id>/` (the $STRATUM_MODEL_DIR layout) or the HF cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    local_dir = Path(to) / spec.hub_id if to is not None else None
    try:
        folder = snapshot_download(spec.hub_id, allow_patterns=list(spec.files) or None,
                                   local_dir=local_dir, cache_dir=cache_dir)
    except GatedRepoError as exc:
        raise _gated(spec, exc) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot download {spec.hub_id}: {exc}") from exc
    return Path(folder)


def model_dir_from_env(environ: dict[str, str] | os._Environ = os.environ) -> Path | None:
    """Read $STRATUM_MODEL_DIR (only the CLI and Dagster resources call this)."""
    value = environ.get("STRATUM_MODEL_DIR")
    return Path(value).expanduser() if value else None


def offline_from_env(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    return environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
