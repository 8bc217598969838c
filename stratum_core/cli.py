"""The `stratum` command line: process, status, verify, and the commands other modules register."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from stratum_core import __version__
from stratum_core.errors import ConfigError, RunInterrupted, StratumError
from stratum_core.stopping import SIGNAL_EXIT_CODES

log = logging.getLogger("stratum")

# Modules that add their own subcommands through `register(subparsers)`.
COMMAND_MODULES = (
    "stratum_core.models_cli", "stratum_core.shards_cli", "stratum_core.publish.cli", "stratum_core.preview",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    trailing = getattr(args, "trailing_positionals", None)
    if extra and trailing and not any(e.startswith("-") for e in extra):
        getattr(args, trailing).extend(extra)  # e.g. `stratum preview DS --source X id1 id2`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if getattr(args, "verbose", False):
        # Only our own loggers: a DEBUG root would flood the output with Pillow's chunk traces.
        logging.getLogger("stratum").setLevel(logging.DEBUG)
    try:
        return args.handler(args)
    except RunInterrupted as exc:  # a clean stop (SIGINT 130, SIGTERM 143): the summary is printed already
        log.error("%s", exc)
        return exc.exit_code
    except StratumError as exc:
        log.error("error: %s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stratum", description=__doc__)
    parser.add_argument("--version", action="version", version=f"stratum {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_process(sub)
    _add_status(sub)
    _add_verify(sub)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def _add_process(sub: argparse._SubParsersAction) -> None:
    from stratum_core.passes import REGISTRY, PassUnavailable, pass_class, passes_help

    p = sub.add_parser("process", help="run passes over a folder of images")
    p.add_argument("input_dir", type=Path)
    p.add_argument("--output", "-o", type=Path, required=True, help="dataset directory to write")
    p.add_argument("--passes", default="all", help=passes_help())
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--precision", default="auto",
                   help="auto | fp32 | tf32 | bf16 | fp16, or per pass, e.g. bf16,depth=fp32 (auto: each pass's "
                        "default on CUDA: bf16, depth tf32, pose fp32; fp32 on the CPU)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per model batch, and per same-bucket group the engine hands the passes "
                        "(default: each pass picks its batch from free GPU memory; groups of 32 on CUDA, "
                        "8 on CPU, grown to that choice up to 64)")
    p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                   help="decode threads (default: number of cores, at most 8)")
    select = p.add_mutually_exclusive_group()
    select.add_argument("--shard", help="N/M: only images at positions N, N+M, … of the sorted list")
    select.add_argument("--shard-key", help="run exactly one registered shard (see `stratum shards`)")
    p.add_argument("--image-list", type=Path, help="file with one image path per line (not with --shard-key)")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="folder of models laid out as <hub id>/ (default $STRATUM_MODEL_DIR)")
    p.add_argument("--model", action="append", default=[], metavar="PASS=PATH",
                   help="explicit weights for one pass, e.g. --model seg=/w/seg.pt2 (repeatable)")
    p.add_argument("--progress-every", type=float, default=30.0,
                   help="seconds between progress lines when not on a terminal (default 30)")
    p.add_argument("--verbose", "-v", action="store_true", help="log every image")
    p.add_argument("--redo", choices=("stale", "all"), default=None,
                   help="also recompute existing artifacts: 'stale' (see `stratum status`) and their downstream, "
                        "or 'all' (default: existing files are done)")
    for name in REGISTRY:
        try:
            pass_class(name).add_arguments(p)
        except PassUnavailable:
            continue
    p.set_defaults(handler=cmd_process)


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="count artifacts per type and failures per pass")
    p.add_argument("output_dir", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=cmd_status)


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check every artifact's shape, dtype and values")
    p.add_argument("output_dir", type=Path)
    p.add_argument("--fix", action="store_true", help="delete bad files so the next run redoes them")
    p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                   help="processes checking image folders in parallel (default: CPU count, at most 8)")
    p.add_argument("--progress-every", type=float, default=30.0,
                   help="seconds between progress lines on stderr (default 30)")
    p.set_defaults(handler=cmd_verify)


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def cmd_status(args: argparse.Namespace) -> int:
    from stratum_core.status import dataset_status, require_dataset

    require_dataset(args.output_dir)  # a missing folder, or the input folder given by mistake: exit 2
    status = dataset_status(args.output_dir)
    _write(json.dumps(status.to_dict(), indent=1) if args.json else status.format())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from stratum_core.verify import ProgressLines, verify

    if not args.output_dir.is_dir():
        raise StratumError(f"no dataset at {args.output_dir}")
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    report = verify(args.output_dir, fix=args.fix, workers=args.workers,
                    progress=ProgressLines(sys.stderr, every=args.progress_every))
    _write(report.format())
    return 0 if report.ok or args.fix else 1


def parse_model_paths(values: Sequence[str]) -> dict[str, Path]:
    from stratum_core.passes import REGISTRY

    paths = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or name not in REGISTRY:
            raise StratumError(f"--model takes PASS=PATH with PASS one of {', '.join(REGISTRY)}, got {value!r}")
        paths[name] = Path(path).expanduser()
    return paths


def cmd_process(args: argparse.Namespace) -> int:
    from stratum_core.discover import parse_shard
    from stratum_core.passes import parse_passes, pass_class
    from stratum_core.stopping import StopRequest, stop_on_signals
    from stratum_core.store import check_output_dir

    if args.shard_key and args.image_list:
        raise ConfigError("--image-list and --shard-key both choose the images: give one")
    names = parse_passes(args.passes)
    configs = {n: pass_class(n).config_from_args(args, os.environ) for n in names}
    if args.shard:
        parse_shard(args.shard)  # a typo fails now, before the device claim imports torch
    check_output_dir(args.output)  # a read-only or non-folder output is a usage error before any work
    stop = StopRequest()
    with stop_on_signals(stop):  # SIGINT/SIGTERM: a clean stop; a second one exits at once
        summary = _process(args, names, configs, stop)
    _write(summary.format())
    return summary.exit_code


def _process(args: argparse.Namespace, names: tuple[str, ...], configs: dict, stop):
    """Claim the device, find the images and run them; returns the RunSummary."""
    from stratum_core.devices import claim_device
    from stratum_core.discover import IMAGE_EXTENSIONS, discover
    from stratum_core.engine import RunConfig, run
    from stratum_core.models import model_dir_from_env, offline_from_env
    from stratum_core.passes import MODEL_PASSES
    from stratum_core.passes.base import PassOptions

    claim = claim_device(args.device if set(names) & set(MODEL_PASSES) else "cpu")
    try:
        options = PassOptions(
            device=claim.device, precision=args.precision, batch_size=args.batch_size,
            model_dir=args.model_dir or model_dir_from_env(), model_paths=parse_model_paths(args.model),
            offline=offline_from_env())
        config = RunConfig(output_dir=args.output, passes=names, options=options, pass_configs=configs,
                           workers=args.workers,
                           progress_every=args.progress_every, verbose=args.verbose, redo=args.redo or "none")
        if args.shard_key:
            from stratum_core.shards import shard_sources

            images, errors = shard_sources(args.input_dir, args.output, args.shard_key), []
        else:
            found = discover(args.input_dir, args.image_list, args.shard)
            images, errors = found.images, found.errors
        if not images and not errors:
            raise ConfigError(f"no images found under {args.input_dir} "
                              f"(extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})")
        require_ready(config)
        log.info("stratum: %d images, passes %s, device %s", len(images), ",".join(names), claim.device)
        try:
            return run(config, images, errors, stop=stop)
        except StratumError as exc:
            if exc.summary is not None:  # the run had started: say what was done before the error
                _write(exc.summary.format())
            raise
    finally:
        claim.release()


def require_ready(config) -> None:
    """Every setup problem of the run at once (weights, packages, caption server), before any work."""
    from stratum_core.passes import build_passes
    from stratum_core.preflight import check_passes, setup_problems

    passes = build_passes(config.passes, config.options, config.pass_configs)
    problems = setup_problems(check_passes(passes, download=not config.options.offline))
    if problems:
        raise ConfigError(f"these passes cannot run here; nothing was processed:\n{problems}")


def console_main() -> None:
    code = main()
    if code in SIGNAL_EXIT_CODES.values():
        # A clean stop is complete (record saved, summary printed); a request still waiting on a hung
        # server must not hold the exit (the interpreter would join its worker threads first).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)

