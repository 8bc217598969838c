"""`stratum preview DATASET [IMAGE_ID ...]`: write contact sheets and an index.html."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from stratum_core.errors import ConfigError
from stratum_core.store import STATE_DIR, Store, write_atomic

log = logging.getLogger("stratum.preview")

PREVIEW_SUBDIR = "preview"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preview", help="draw a PNG contact sheet per image and an index.html")
    p.add_argument("dataset_dir", type=Path, help="the output folder of `stratum process`")
    p.add_argument("image_ids", nargs="*", metavar="IMAGE_ID",
                   help="images to draw (default: a random sample of the dataset)")
    p.add_argument("--source", type=Path, default=None,
                   help="the run's input folder: re-make the bucket crop from the source image "
                        "(images with pixel.npy never need it)")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="draw N images at random (default 16 when no IMAGE_ID is given; 0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"folder for the PNGs and index.html (default <dataset_dir>/{STATE_DIR}/{PREVIEW_SUBDIR})")
    # argparse stops filling IMAGE_ID at the first option; the CLI appends ids that come later.
    p.set_defaults(handler=cmd_preview, trailing_positionals="image_ids")


@dataclass
class PreviewResult:
    """What one `stratum preview` wrote: the index page, sheets by image id, and ids that failed."""

    index: Path
    sheets: dict[str, Path] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def write_previews(dataset_dir: Path, image_ids: Sequence[str], out_dir: Path,
                   source_dir: Path | None = None) -> PreviewResult:
    """Render a sheet per id into `out_dir`, then `out_dir/index.html` listing the sheets that were made."""
    from stratum_core.preview.index import IndexEntry, render_index
    from stratum_core.preview.layers import load_layers
    from stratum_core.preview.selection import sheet_filenames
    from stratum_core.preview.sheet import render_sheet, to_png

    out_dir.mkdir(parents=True, exist_ok=True)
    result = PreviewResult(out_dir / "index.html")
    entries = []
    for image_id, filename in sheet_filenames(image_ids).items():
        try:
            Store(dataset_dir).image_dir(image_id)
            layers = load_layers(dataset_dir, image_id, source_dir)
            write_atomic(out_dir / filename, to_png(render_sheet(layers)))
        except (FileNotFoundError, ValueError) as exc:  # an unknown id, or one that is not an id
            log.error("%s: %s", image_id, exc)
            result.errors[image_id] = str(exc)
            continue
        except Exception as exc:  # anything else about one image (damaged files, a bug) must not stop the rest
            log.exception("%s: no sheet: %s: %s", image_id, type(exc).__name__, exc)
            result.errors[image_id] = f"{type(exc).__name__}: {exc}"
            continue
        result.sheets[image_id] = out_dir / filename
        entries.append(IndexEntry(image_id, filename, layers.caption))
        log.info("%s → %s", image_id, out_dir / filename)
    write_atomic(result.index, render_index(entries, dataset_dir.resolve().name).encode("utf-8"))
    return result


def cmd_preview(args: argparse.Namespace) -> int:
    from stratum_core.preview.selection import select_image_ids

    if not args.dataset_dir.is_dir():
        raise ConfigError(f"no dataset at {args.dataset_dir}")
    if args.sample is not None and args.sample < 0:
        raise ConfigError(f"--sample must be 0 or more, got {args.sample}")
    if args.source is not None and not args.source.is_dir():
        raise ConfigError(f"--source is not a folder: {args.source}")
    out_dir = args.out or args.dataset_dir / STATE_DIR / PREVIEW_SUBDIR
    image_ids = select_image_ids(args.dataset_dir, args.image_ids, args.sample, args.seed)
    result = write_previews(args.dataset_dir, image_ids, out_dir, args.source)
    log.info("wrote %d sheet%s and %s", len(result.sheets), "" if len(result.sheets) == 1 else "s", result.index)
    return 1 if result.errors else 0
