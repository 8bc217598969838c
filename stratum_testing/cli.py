"""`stratum` commands run in the test's own process (the subprocess tests run the installed script)."""

from __future__ import annotations

from pathlib import Path


def process_cli(source: Path, output: Path, *args: str) -> int:
    """`stratum process SOURCE -o OUTPUT ARGS…` in this process; its exit code."""
    from stratum_core.cli import main

    return main(["process", str(source), "-o", str(output), *args])
