"""`python -m stratum_dagster.quickstart IN OUT`: register shards and run enrich_job on each, locally.

Uses the Dagster instance in $DAGSTER_HOME, by default one per dataset in OUT/.stratum/dagster_home
(SQLite), so the partitions of two datasets never mix. Passes that cannot run on this machine (no
weights, no caption server) are left out of the run, with exactly what to fetch or start; metadata
(enrich_job) and pixel (pixel_job) always run, so the dataset is usable from the first call.
Ctrl-C or SIGTERM stops the current shard cleanly and ends with exit 130 / 143; run it again to resume.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("stratum.quickstart")

# The quickstart's own instance: no telemetry banner, no "no dagster.yaml" warning, no first-open dialog.
INSTANCE_YAML = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"


def runnable_passes(stratum, caption_server) -> tuple[list[str], dict[str, str]]:
    """The default passes that can run here (never downloading), and advice for each one that cannot."""
    from stratum_core.passes import DEFAULT_PASSES

    readiness = stratum.preflight(DEFAULT_PASSES, caption_server, download=False)
    return [r.pass_name for r in readiness if r.ready], {r.pass_name: r.advice for r in readiness if not r.ready}


class StopRequest:
    """The first SIGINT/SIGTERM stops the quickstart after the current shard's run stopped cleanly (the
    engine finishes the writes in flight); a second one, outside a run, ends the process at once.

    While a run executes, Dagster replaces our handlers (it turns the signal into an interrupted step),
    so the signal is also read back from a wakeup pipe, which sees every signal whoever handles it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._pipe: int | None = None

    def install(self) -> None:
        read, write = os.pipe()
        for fd in (read, write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(write)
        self._pipe = read
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signum = signum
        raise KeyboardInterrupt

    def requested(self) -> bool:
        """Whether SIGINT or SIGTERM arrived (also while Dagster held the signal handlers)."""
        if self.signum is None and self._pipe is not None:
            try:
                received = os.read(self._pipe, 256)
            except BlockingIOError:
                received = b""
            self.signum = next((n for n in received if n in (signal.SIGINT, signal.SIGTERM)), None)
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stratum_dagster.quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--caption-url", "--ollama-url", dest="caption_url",
                        help="caption server (default $STRATUM_CAPTION_URL, else http://localhost:11434/api/generate)")
    parser.add_argument("--caption-model", "--ollama-model", dest="caption_model",
                        help="model on the server (default $STRATUM_CAPTION_MODEL, else gemma3:27b)")
    parser.add_argument("--caption-backend", choices=("ollama", "openai"),
                        help="default $STRATUM_CAPTION_BACKEND, else ollama")
    return parser.parse_args(argv)


def prepare_instance(output_dir: Path) -> Path:
    """$DAGSTER_HOME, else the dataset's own instance folder; a dagster.yaml is written if there is none."""
    home = Path(os.environ.get("DAGSTER_HOME") or output_dir / ".stratum" / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(INSTANCE_YAML, encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("dagster", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    input_dir, output_dir = args.input_dir.resolve(), args.output_dir.resolve()
    if not input_dir.is_dir():
        log.error("no such folder: %s", input_dir)
        return 2
    stop = StopRequest()
    stop.install()
    try:
        return run_quickstart(args, input_dir, output_dir, stop)
    except KeyboardInterrupt:  # a signal outside a run (registration, start-up)
        log.error("stopped by %s", signal.Signals(stop.signum or signal.SIGINT).name)
        return stop.exit_code


def run_quickstart(args: argparse.Namespace, input_dir: Path, output_dir: Path, stop: StopRequest) -> int:
    """Register the input's shards, then run enrich_job (what can run here) and pixel_job on each shard."""
    home = prepare_instance(output_dir)
    # The code location's resources read these (dg.EnvVar) when the job runs.
    os.environ["STRATUM_INPUT_DIR"], os.environ["STRATUM_OUTPUT_DIR"] = str(input_dir), str(output_dir)

    import dagster as dg

    from stratum_core.shards import register_all, shard_keys
    from stratum_core.status import dataset_status
    from stratum_dagster.definitions import defs as code_location
    from stratum_dagster.partitions import add_registered_shards
    from stratum_dagster.resources import CaptionServerResource, StratumResource

    registration = register_all(input_dir, output_dir)
    for error in registration.errors:
        log.warning("refused %s: %s", error.source, error.message)
    keys = shard_keys(output_dir)
    if not keys:
        log.error("no images found in %s", input_dir)
        return 2
    caption_settings = {k: v for k, v in (("url", args.caption_url), ("model", args.caption_model),
                                          ("backend", args.caption_backend)) if v}
    ready, advice = runnable_passes(StratumResource(input_root=str(input_dir), output_root=str(output_dir)),
                                    CaptionServerResource(**caption_settings))
    for name, what in advice.items():
        log.warning("%-7s not run: %s", name, what)
    selection = ["metadata", *ready]
    log.info("running enrich_job (%s) and pixel_job on %d shard(s): %s", ",".join(selection), len(keys),
             ", ".join(keys))

    instance = dg.DagsterInstance.get()
    defs = code_location()
    add_registered_shards(instance, output_dir)
    run_config: dict = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    if caption_settings:
        run_config["resources"] = {"caption_server": {"config": caption_settings}}
    failed_runs, finished = 0, 0
    for key in keys:
        for job_name, assets in (("enrich_job", selection), ("pixel_job", ["pixel"])):
            try:
                result = defs.resolve_job_def(job_name).execute_in_process(
                    instance=instance, partition_key=key, run_config=run_config,
                    asset_selection=[dg.AssetKey(n) for n in assets], raise_on_error=False)
            except KeyboardInterrupt:
                result = None
            if stop.requested() or result is None:
                log.error("stopped by %s during shard %s (%s); %d of %d shards finished; run the same command "
                          "again to resume", signal.Signals(stop.signum or signal.SIGINT).name, key, job_name, finished, len(keys))
                sys.stdout.write(dataset_status(output_dir).format() + "\n")
                return stop.exit_code
            failed_runs += not result.success
            log.info("shard %s %s: %s (run %s)", key, job_name, "ok" if result.success else "FAILED", result.run_id)
        finished += 1
    sys.stdout.write(dataset_status(output_dir).format() + "\n")
    if advice:
        sys.stdout.write("\nNot run here:\n" + "".join(f"  {n}: {a}\n" for n, a in advice.items()))
    sys.stdout.write(f"\nBrowse the runs: DAGSTER_HOME={home} STRATUM_INPUT_DIR={input_dir} "
                     f"STRATUM_OUTPUT_DIR={output_dir} dg dev\n")
    return 1 if failed_runs else 0


if __name__ == "__main__":
    sys.exit(main())
