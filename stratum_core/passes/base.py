"""The Pass interface: what a pass needs, what it writes, load, and run a batch.

The engine owns looping, batching by bucket, threads and writing; a pass only turns
a batch of decoded items into outcomes. `forward` is the hot path (no PIL, no file
I/O); the base wraps it in `torch.inference_mode` when torch is in use.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from stratum_core.artifacts import Artifact, artifacts_of
from stratum_core.buckets import Bucket
from stratum_core.discover import SourceImage
from stratum_core.errors import ConfigError, InfrastructureError, ItemError, is_out_of_memory
from stratum_core.intake import Decoded
from stratum_core.models import ModelLocation, ModelSpec, resolve_model
from stratum_core.outcomes import Outcome

log = logging.getLogger("stratum.passes")

PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")  # tf32: fp32 values, TF32 tensor-core matmuls on CUDA


def parse_precision(spec: str) -> tuple[str, dict[str, str]]:
    """`"bf16"`, `"depth=fp32"` or `"bf16,depth=fp32,pose=fp32"` → (the value for every pass not
    named, {pass: value}). A plain value applies to every pass; `auto` lets each pass choose."""
    default, per_pass = "auto", {}
    for part in (p.strip() for p in str(spec).split(",")):
        name, sep, value = part.rpartition("=")
        if value not in PRECISIONS:
            raise ConfigError(f"--precision takes {' | '.join(PRECISIONS)} or PASS=VALUE (e.g. depth=fp32), "
                              f"got {part!r}")
        if not sep:
            default = value
            continue
        from stratum_core.passes import REGISTRY  # here: the registry module imports this one

        if name not in REGISTRY:
            raise ConfigError(f"--precision {part!r}: unknown pass {name!r}; choose from {', '.join(REGISTRY)}")
        per_pass[name] = value
    return default, per_pass


@dataclass(frozen=True)
class PassOptions:
    """Settings every pass shares; built by the CLI or the Dagster resources.

    `batch_size` (`--batch-size`) is the one batch-size setting of a run. Two sizes follow from it:
    the *model batch*, the items one `forward` call gets (`Pass.max_batch`), and the engine's
    *group*, the same-bucket images handed to the lanes at once (`RunConfig.group_size`), which a
    pass splits into model batches. Given, it is both. None: each pass picks its model batch (the
    torch passes from free GPU memory, `Pass.chosen_batch`), and the groups are 32 images on CUDA,
    8 on the CPU, grown to a pass's chosen batch up to 64 (`engine.MAX_AUTO_GROUP`).
    """

    device: str = "cpu"  # resolved: "cpu" or "cuda:N"
    precision: str = "auto"  # one value, or per pass: "bf16,depth=fp32" (see parse_precision)
    batch_size: int | None = None  # model batch and engine group; None: by device and free memory (see above)
    model_dir: Path | None = None  # $STRATUM_MODEL_DIR, read at the edge
    model_paths: Mapping[str, Path] = field(default_factory=dict)  # pass name → explicit path
    offline: bool = False  # HF_HUB_OFFLINE, read at the edge

    def __post_init__(self) -> None:
        parse_precision(self.precision)  # raises ConfigError on a bad value or pass name
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"unresolved device {self.device!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def resolved_precision(self) -> str:
        """`auto` is bf16 on CUDA and fp32 on the CPU (a pass's own `auto` is applied by `for_pass`)."""
        precision = parse_precision(self.precision)[0]
        if precision == "auto":
            return "bf16" if self.is_cuda else "fp32"
        return precision

    def for_pass(self, name: str, auto: str | None = None) -> "PassOptions":
        """These options as pass `name` sees them: its own precision (its entry, else the plain value),
        with `auto` replaced by the pass's `auto` on CUDA when it has one (depth: tf32, pose: fp32)."""
        default, per_pass = parse_precision(self.precision)
        precision = per_pass.get(name, default)
        if precision == "auto" and auto is not None:
            precision = auto if self.is_cuda else "fp32"  # the CPU's auto is fp32 for every pass
        return replace(self, precision=precision)


@dataclass
class Item:
    """One decoded image travelling through the passes of a run.

    `inputs` holds artifacts produced earlier in this run or read from disk (the
    engine fills in each pass's `reads`); `scratch` lets related passes of one lane share
    work, e.g. the three Sapiens passes share one preprocessed tensor (a pass lists the keys
    it makes in `scratch_keys`, and the engine drops them when its lane is done with the batch).
    """

    source: SourceImage
    decoded: Decoded
    inputs: dict[str, Any] = field(default_factory=dict)
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def image_id(self) -> str:
        return self.source.image_id

    @property
    def crop(self):
        """(bucket.height, bucket.width, 3) uint8 RGB."""
        return self.decoded.crop

    @property
    def bucket(self) -> Bucket:
        return self.decoded.bucket


@dataclass(frozen=True)
class NoConfig:
    """For passes without options of their own."""


class Pass:
    """Base class of every pass. Constructors only store config: no downloads, no GPU."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    requires_modules: ClassVar[tuple[str, ...]] = ()  # importable modules this pass needs
    pip_extra: ClassVar[str] = ""  # the pip extra that installs `requires_modules`
    reads: ClassVar[tuple[str, ...]] = ()  # artifact names read from earlier passes
    io_bound: ClassVar[bool] = False  # waits on a server: gets its own lane in the engine
    uses_image: ClassVar[bool] = True  # False: the engine skips decoding when only this pass runs
    uses_torch: ClassVar[bool] = False  # True: forward runs under torch.inference_mode
    scratch_keys: ClassVar[tuple[str, ...]] = ()  # item.scratch entries it makes; dropped after its lane's batch
    model: ClassVar[ModelSpec | None] = None  # set: a model pass (placed on the GPU, listed by `stratum models`)
    default: ClassVar[bool] = False  # True: part of `--passes all`
    config_class: ClassVar[type] = NoConfig
    # What `--precision auto` means for this pass; None: bf16 on CUDA, fp32 on the CPU. A pass whose
    # artifact needs more than bf16 resolution says so here (depth: tf32, pose: fp32).
    auto_precision: ClassVar[str | None] = None

    def __init__(self, options: PassOptions, config: Any = None):
        self.options = options.for_pass(self.name, self.auto_precision)  # this pass's own precision
        self.config = config if config is not None else self.config_class()
        self.chosen_batch: int | None = None  # set by load() where it picks a size (from free GPU memory)
        self.oom_limit: int | None = None  # largest batch that has not run out of device memory
        self.weights: ModelLocation | None = None  # set by resolve_weights()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this pass's own `stratum process` options (none by default)."""

    @classmethod
    def config_from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
        """Build this pass's config from parsed options; the CLI's edge, where env vars are read."""
        return None

    @property
    def artifacts(self) -> tuple[Artifact, ...]:
        return artifacts_of(self.name)

    @property
    def max_batch(self) -> int:
        """Largest model batch handed to `forward`: what `load()` chose, else --batch-size, else 16."""
        return self.chosen_batch or self.options.batch_size or 16

    def resolve_weights(self) -> ModelLocation:
        """This pass's model: --model path → $STRATUM_MODEL_DIR/<hub id>/ → HF cache / download."""
        self.weights = resolve_model(self.model, explicit=self.options.model_paths.get(self.name),
                                     model_dir=self.options.model_dir, offline=self.options.offline)
        return self.weights

    @property
    def concurrency(self) -> int:
        """Items this pass works on at once (server requests in flight); above 1 the engine overlaps batches."""
        return 1

    def check_requirements(self) -> None:
        """Raise one clear message if an optional dependency is missing."""
        missing = [m for m in self.requires_modules if importlib.util.find_spec(m) is None]
        if missing:
            hint = f"pip install 'stratum[{self.pip_extra}]'" if self.pip_extra else "pip install " + " ".join(missing)
            raise InfrastructureError(f"the {self.name} pass needs {', '.join(missing)}: {hint}")
        if self.uses_torch and self.options.is_cuda:
            from stratum_core.devices import require_torch_cuda  # imports torch: only for GPU runs

            require_torch_cuda(self.options.device)

    def load(self) -> None:
        """Load weights (called once, on the worker, before the first batch)."""

    def preprocess(self, item: Item) -> Any:
        return item

    def forward(self, batch: list[Any]) -> Any:
        raise NotImplementedError

    def postprocess(self, outputs: Any, items: Sequence[Item]) -> list[Outcome]:
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        """What produced the artifacts: recorded in the run record and Dagster metadata."""
        record: dict[str, Any] = {"pass": self.name, "version": self.version, "device": self.options.device,
                                  "precision": self.options.resolved_precision}
        if self.model is not None:
            record["model"] = self.model.hub_id
        if self.weights is not None:
            record.update(weights=str(self.weights.root), weights_source=self.weights.source)
        if self.chosen_batch is not None:
            record["batch_size"] = self.chosen_batch
        if self.oom_limit is not None:
            record["batch_size_after_out_of_memory"] = self.oom_limit
        return record

    def close(self) -> None:
        """Release models and connections at the end of a run."""

    def inference_context(self) -> contextlib.AbstractContextManager:
        if not self.uses_torch:
            return contextlib.nullcontext()
        # A real import, not sys.modules: another lane may be importing torch right now, and
        # the import lock makes this thread wait until the module is complete.
        import torch

        if self.options.is_cuda and self.options.resolved_precision == "tf32":
            from stratum_core.passes.torch_utils import tf32_matmuls

            stack = contextlib.ExitStack()
            stack.enter_context(tf32_matmuls())
            stack.enter_context(torch.inference_mode())
            return stack
        return torch.inference_mode()

    def run_batch(self, items: Sequence[Item]) -> list[Outcome]:
        """preprocess → forward (in chunks of `max_batch`) → postprocess, keeping item errors per item."""
        outcomes: list[Outcome | None] = [None] * len(items)
        prepared: list[tuple[int, Any]] = []
        for i, item in enumerate(items):
            try:
                prepared.append((i, self.preprocess(item)))
            except ItemError as exc:
                outcomes[i] = Outcome.failed(exc.reason, exc.message)
        start = 0
        while start < len(prepared):
            chunk = prepared[start:start + max(1, min(self.max_batch, self.oom_limit or self.max_batch))]
            out_of_memory = None
            try:
                with self.inference_context():
                    outputs = self.forward([p for _, p in chunk])
            except Exception as exc:
                if len(chunk) == 1 or not is_out_of_memory(exc):
                    raise
                out_of_memory = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if out_of_memory is not None:
                # Out here the exception is gone, and with it the traceback holding the batch's tensors.
                self._halve_batch(len(chunk), out_of_memory)
                continue  # the same images again, in smaller chunks
            for (i, _), outcome in zip(chunk, self.postprocess(outputs, [items[i] for i, _ in chunk])):
                outcomes[i] = outcome
            start += len(chunk)
        return [o if o is not None else Outcome.failed("inference_error", "no outcome") for o in outcomes]

    def _halve_batch(self, failed_size: int, reason: str) -> None:
        """A batch ran out of device memory (the free-memory estimate was too high, or other passes and
        runs grew since): use half that size from now on, for this run."""
        self.oom_limit = max(1, failed_size // 2)
        log.warning("%s: out of device memory at batch %d; continuing at batch %d (%s)", self.name, failed_size,
                    self.oom_limit, reason)
        if self.uses_torch:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give the failed batch's cached blocks back before retrying
