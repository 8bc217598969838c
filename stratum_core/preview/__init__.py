"""`stratum preview`: PNG contact sheets of what stratum produced, plus an HTML index."""

from __future__ import annotations

import argparse
from pathlib import Path

# Heavy modules (PIL drawing, numpy maths) are imported inside the functions, so building the
# `stratum` parser stays fast for every other subcommand.


def sheet_png(output_dir: Path, image_id: str, source_dir: Path | None = None, max_width: int = 1024) -> bytes:
    """PNG bytes of `image_id`'s contact sheet, scaled down (never up) to at most `max_width` pixels wide.

    `source_dir` is the input folder of the run; the bucket crop is re-made from the source image
    named in metadata.json when pixel.npy is absent.
    """
    from stratum_core.preview.sheet import render_sheet_png

    return render_sheet_png(Path(output_dir), image_id, Path(source_dir) if source_dir else None, max_width)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `preview` subcommand to the `stratum` parser."""
    from stratum_core.preview.command import add_parser

    add_parser(sub)
