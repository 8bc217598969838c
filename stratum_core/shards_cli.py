"""`stratum shards register | list`: the named shards that Dagster partitions and `--shard-key` use."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stratum_core.errors import StratumError
from stratum_core.shards import DEFAULT_SHARD_SIZE, load_shard, register_all, shard_completion, shard_keys

log = logging.getLogger("stratum.shards")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help="register and list named shards (Dagster partitions, --shard-key)")
    ssub = p.add_subparsers(dest="shards_command", required=True, metavar="ACTION")
    reg = ssub.add_parser("register", help="put every unregistered image into new shards")
    reg.add_argument("input_dir", type=Path)
    reg.add_argument("--output", "-o", type=Path, required=True, help="dataset directory")
    reg.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                     help=f"images per new shard (default {DEFAULT_SHARD_SIZE})")
    reg.set_defaults(handler=cmd_register)
    lst = ssub.add_parser("list", help="every shard with its size and finished passes")
    lst.add_argument("output_dir", type=Path)
    lst.set_defaults(handler=cmd_list)


def cmd_register(args: argparse.Namespace) -> int:
    if not args.input_dir.is_dir():
        raise StratumError(f"input directory does not exist: {args.input_dir}")
    registration = register_all(args.input_dir, args.output, args.shard_size)
    for error in registration.errors:
        log.warning("refused %s: %s: %s", error.source, error.reason, error.message)
    for shard in registration.new_shards:
        sys.stdout.write(f"{shard.key}\t{len(shard.images)} images\n")
    sys.stdout.write(f"{len(registration.new_shards)} new shards, {len(shard_keys(args.output))} in all\n")
    return 1 if registration.errors else 0


def cmd_list(args: argparse.Namespace) -> int:
    if not args.output_dir.is_dir():
        raise StratumError(f"no dataset at {args.output_dir}")
    keys = shard_keys(args.output_dir)
    if not keys:
        raise StratumError(f"no shards registered in {args.output_dir} "
                           f"(`stratum shards register INPUT_DIR -o {args.output_dir}` registers them)")
    for key in keys:
        shard = load_shard(args.output_dir, key)
        completion = shard_completion(args.output_dir, shard)
        finished = ",".join(p for p in completion.done if completion.complete(p)) or "-"
        sys.stdout.write(f"{key}\t{len(shard.images)} images\tcomplete: {finished}\n")
    return 0
