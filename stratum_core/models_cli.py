"""`stratum models list | download`: what each model pass needs and where it was found."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stratum_core.errors import ModelNotFoundError
from stratum_core.models import download_model, hf_cache_folder, model_dir_from_env, resolve_model
from stratum_core.passes import MODEL_PASSES, PassUnavailable, parse_passes, pass_class

log = logging.getLogger("stratum.models")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list or download the models of the passes")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    lst = msub.add_parser("list", help="show each model and where it was found")
    lst.add_argument("--model-dir", type=Path, default=None, help="default $STRATUM_MODEL_DIR")
    lst.set_defaults(handler=cmd_list)
    dl = msub.add_parser("download", help="fetch the models of the given passes")
    dl.add_argument("--passes", default="all", help="comma-separated passes or 'all'")
    dl.add_argument("--to", type=Path, default=None,
                    help="folder to put <hub id>/ under (default $STRATUM_MODEL_DIR, else the HF cache)")
    dl.set_defaults(handler=cmd_download)


def model_specs(names) -> dict:
    """hub id → (spec, passes using it), for the passes in `names` that have a model."""
    specs: dict = {}
    for name in names:
        try:
            spec = pass_class(name).model
        except PassUnavailable:
            continue
        if spec is not None:
            specs.setdefault(spec.hub_id, (spec, []))[1].append(name)
    return specs


def cmd_list(args: argparse.Namespace) -> int:
    model_dir = args.model_dir or model_dir_from_env()
    where_to_look = f"{model_dir}/<hub id>/" if model_dir else "$STRATUM_MODEL_DIR (not set)"
    sys.stdout.write(f"Looked in {where_to_look}, then the HuggingFace cache {hf_cache_folder(None)}\n")
    for hub_id, (spec, users) in model_specs(MODEL_PASSES).items():
        try:
            where = resolve_model(spec, model_dir=model_dir, offline=True)
            state = f"present, {_size(where.root, spec.required_files)} ({where.source}: {where.root})"
        except ModelNotFoundError:
            state = f"missing: stratum models download --passes {','.join(users)}"
        sys.stdout.write(f"{hub_id:<45} {','.join(users):<18} {state}\n")
    return 0


def _size(folder: Path, files: tuple[str, ...]) -> str:
    total = sum((folder / name).stat().st_size for name in files if (folder / name).is_file())
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if total >= scale:
            return f"{total / scale:.1f} {unit}"
    return f"{total} B"


def cmd_download(args: argparse.Namespace) -> int:
    to = args.to or model_dir_from_env()
    names = [n for n in parse_passes(args.passes) if n in MODEL_PASSES]
    for hub_id, (spec, users) in model_specs(names).items():
        log.info("downloading %s (%s)%s", hub_id, ",".join(users), f" into {to}" if to else "")
        folder = download_model(spec, to)
        sys.stdout.write(f"{hub_id}: {folder}\n")
    return 0
