"""Sapiens-1B TorchScript passes: body-part segmentation (seg), relative depth and surface normals.

All three checkpoints take the same input (the bucket crop resized to 1024×768, H×W,
normalised with the Sapiens mean/std on 0-255 RGB), so when they run together the crop
is preprocessed once and shared through `item.scratch`. depth and normal need seg: its
mask comes from `item.inputs["seg"]` (this run's seg outcome, or seg.npy read by the engine).

Model outputs (N, C, h, w) are at the checkpoint's own resolution. From the Sapiens-1B
training configs (3 or 4 stride-2 deconvolutions over the 64×48 token grid) they are
seg (N, 28, 512, 384), depth (N, 1, 1024, 768) and normal (N, 3, 512, 384); this module
reads h, w from the output and never assumes them.

torch is imported inside functions: the CLI imports every pass module, torch or not.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from stratum_core.artifacts import SEG_CLASSES
from stratum_core.errors import InfrastructureError, ItemError
from stratum_core.models import ModelSpec
from stratum_core.outcomes import Outcome
from stratum_core.passes import torch_utils
from stratum_core.passes.base import Item, Pass
from stratum_core.passes.host_buffers import HostBuffers

log = logging.getLogger("stratum.sapiens")

INPUT_SIZE = (1024, 768)  # (height, width) of every Sapiens-1B checkpoint's input
MEAN = (123.5, 116.5, 103.5)  # per RGB channel, on 0-255 values
STD = (58.5, 57.0, 57.5)
SCRATCH_KEY = "sapiens_input"  # item.scratch key of the shared normalised input
NUM_CLASSES = len(SEG_CLASSES)  # 28, index 0 = Background
CHANNELS_MEANING = {"seg": "class logits", "depth": "depth", "normal": "x, y, z"}
TORCHSCRIPT_TRACEBACK = "The following operation failed in the TorchScript interpreter"

# Peak activation memory of one 1024×768 image in the widest head (768 channels at
# 512×384, two buffers alive) plus the fp32 logits at bucket size, at 2 bytes per element
# (bf16/fp16); used for auto batch size, scaled by `bytes_per_item` to the run's precision.
BYTES_PER_ITEM_HALF = 3 * 2**29
MAX_AUTO_BATCH = 32
WARM_UP_CALLS = 2  # one to profile the batch shape, one that builds the optimised graph (see warm_up)

SEG_MODEL = ModelSpec("facebook/sapiens-seg-1b-torchscript",
                      ("sapiens_1b_goliath_best_goliath_mIoU_7994_epoch_151_torchscript.pt2",))
DEPTH_MODEL = ModelSpec("facebook/sapiens-depth-1b-torchscript",
                        ("sapiens_1b_render_people_epoch_88_torchscript.pt2",))
NORMAL_MODEL = ModelSpec("facebook/sapiens-normal-1b-torchscript",
                         ("sapiens_1b_normal_render_people_epoch_115_torchscript.pt2",))


# ---------------------------------------------------------------------- model-free geometry
def prepare_input(crop: np.ndarray, device: str, dtype: Any) -> Any:
    """(bh, bw, 3) uint8 RGB crop → (3, 1024, 768) normalised model input on `device` in `dtype`."""
    import torch
    import torch.nn.functional as F

    pixels = torch_utils.to_device(torch.from_numpy(np.require(crop, requirements=("C", "W"))), device)
    pixels = pixels.permute(2, 0, 1).unsqueeze(0).float()
    # The reference (Sapiens lite demo) cv2.resize'd the whole image to 768×1024 with
    # INTER_LINEAR: aspect not preserved, no antialiasing, half-pixel centres. We do the
    # same to the bucket crop, on the device so a GPU run does not wait on the CPU.
    resized = F.interpolate(pixels, size=INPUT_SIZE, mode="bilinear", align_corners=False, antialias=False)
    mean = torch.tensor(MEAN, device=resized.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=resized.device).view(1, 3, 1, 1)
    return ((resized - mean) / std).squeeze(0).to(dtype)


def resize_to_bucket(output: Any, size: tuple[int, int]) -> Any:
    """(N, C, h, w) model output → (N, C, bh, bw) float32, bilinear like the reference."""
    import torch.nn.functional as F

    return F.interpolate(output.float(), size=size, mode="bilinear", align_corners=False)


def seg_ids(logits: Any) -> Any:
    """(N, 28, bh, bw) logits → (N, bh, bw) uint8 class ids."""
    import torch

    return logits.argmax(dim=1).to(torch.uint8)


def scale_depth(depth: Any, foreground: Any) -> Any:
    """(N, 1, bh, bw) depth, (N, bh, bw) bool → (N, bh, bw) in [0, 1]: foreground min-max, background 0.

    A flat or empty foreground gives zeros (never NaN). Direction is the model's own.
    """
    import torch

    d = depth[:, 0]
    low = torch.where(foreground, d, torch.full_like(d, float("inf"))).amin(dim=(1, 2), keepdim=True)
    high = torch.where(foreground, d, torch.full_like(d, float("-inf"))).amax(dim=(1, 2), keepdim=True)
    span = high - low
    usable = torch.isfinite(span) & (span > 0)
    scaled = ((d - low) / torch.where(usable, span, torch.ones_like(span))).clamp(0.0, 1.0)
    return torch.where(foreground & usable, scaled, torch.zeros_like(d))


def unit_normals(normals: Any, foreground: Any) -> Any:
    """(N, 3, bh, bw), (N, bh, bw) bool → (N, bh, bw, 3): L2-normalised on foreground, 0 elsewhere."""
    import torch

    norm = normals.norm(dim=1, keepdim=True)
    keep = foreground.unsqueeze(1) & (norm > 1e-6)
    unit = torch.where(keep, normals / norm.clamp_min(1e-6), torch.zeros_like(normals))
    return unit.permute(0, 2, 3, 1)


def bytes_per_item(precision: str) -> int:
    """One image's peak memory estimate at a resolved precision: activations grow with the element size."""
    return BYTES_PER_ITEM_HALF * torch_utils.bytes_per_element(precision) // 2


def load_torchscript(path: Path, device: str) -> Any:
    """torch.jit.load `path` onto `device` in eval mode; a clear error naming the file otherwise."""
    import torch

    try:
        with warnings.catch_warnings():  # the checkpoints are TorchScript; torch's deprecation note is noise
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises RuntimeError, ValueError or pickle errors for other formats
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InfrastructureError(
            f"{path} is not a TorchScript checkpoint ({detail}); the Sapiens passes need the "
            f"*_torchscript.pt2 files (see `stratum models download --passes seg,depth,normal`)") from exc
    return model.eval()


def probe(model: Any, device: str, dtype: Any, autocast: bool = False) -> Any:
    """The output of one zero (1, 3, 1024, 768) input, run as `forward` runs batches.

    The real input size, not a tiny one: the Sapiens ViTs have a fixed token grid, and
    TorchScript's profiling executor specialises on the first shapes it sees.
    """
    import torch

    zeros = torch.zeros(1, 3, *INPUT_SIZE, device=device, dtype=dtype)
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=autocast):
        return first_output(model(zeros))


def warm_up(model: Any, device: str, dtype: Any, batch: int, autocast: bool = False) -> None:
    """Run the model twice on a zero batch of the size the run will use, so the first real batch does
    not pay TorchScript's optimisation: the profiling executor records the shapes of one call and
    builds its fused, shape-specialised graph on the next call with those shapes."""
    import torch

    zeros = torch.zeros(batch, 3, *INPUT_SIZE, device=device, dtype=dtype)
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=autocast):
        for _ in range(WARM_UP_CALLS):
            first_output(model(zeros))
    torch_utils.synchronize(device)


def first_output(raw: Any) -> Any:
    """The output tensor (some exports return `(output,)`)."""
    return raw[0] if isinstance(raw, (tuple, list)) else raw


def lower_precision(model: Any, path: Path, device: str, dtype: Any) -> tuple[Any, bool, Any]:
    """Cast the weights to `dtype` and probe them; returns (model, use_autocast, probe output).

    A traced graph can hold float32 constants baked in at trace time, so a cast model may
    reject bf16 inputs. Then the fp32 weights are reloaded and run under autocast instead.
    Any other error (CUDA out of memory above all: a second copy would make it worse) raises.
    """
    try:
        model = model.to(dtype)
        return model, False, probe(model, device, dtype)
    except RuntimeError as exc:
        if not is_dtype_mismatch(exc):
            raise
        log.warning("%s: weights cast to %s fail (%s); running fp32 weights under autocast", path.name,
                    dtype, first_line(exc))
        model = load_torchscript(path, device)
        return model, True, probe(model, device, dtype, autocast=True)


# torch's wording when operands' dtypes differ: "Input type (float) and bias type (c10::BFloat16)
# should be the same", "must have the same dtype", "expected scalar type Float but found BFloat16".
_DTYPE_MISMATCH = re.compile(r"dtype|scalar type|type \(.*\) should be the same", re.IGNORECASE)


def is_dtype_mismatch(exc: Exception) -> bool:
    """Whether a RuntimeError is torch refusing mixed dtypes (judged on the error itself, never the
    TorchScript source lines quoted above it, which often mention dtypes), and not out of memory."""
    message = first_line(exc)
    return "out of memory" not in message.lower() and _DTYPE_MISMATCH.search(message) is not None


def check_channels(pass_name: str, path: Path, output: Any, expected: int) -> None:
    """InfrastructureError unless `output` is (N, expected, h, w): catches another pass's checkpoint."""
    shape = tuple(output.shape)
    if len(shape) != 4 or shape[1] != expected:
        found = (f"{shape[1]} output channel{'' if shape[1] == 1 else 's'}" if len(shape) == 4
                 else f"an output of shape {shape}")
        raise InfrastructureError(
            f"{pass_name}: {path} gives {found}, expected {expected} ({CHANNELS_MEANING[pass_name]}); "
            f"is it the {pass_name} checkpoint?")


def first_line(exc: Exception) -> str:
    """The error's own message line: for a TorchScript interpreter error, the last line (the
    original "RuntimeError: …" below the quoted traceback), else the first."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1] if lines[0].startswith(TORCHSCRIPT_TRACEBACK) else lines[0]


# ---------------------------------------------------------------------- passes
@dataclass
class Prepared:
    """One image ready for a Sapiens model: input (3, 1024, 768) on the device, bucket size, seg mask."""

    pixels: Any
    size: tuple[int, int]  # (bh, bw)
    foreground: Any = None  # (bh, bw) bool tensor, for depth and normal


class SapiensPass(Pass):
    """What the three Sapiens passes share: load, shared preprocessing, batched forward."""

    requires_modules = ("torch",)
    uses_torch = True
    scratch_keys = (SCRATCH_KEY,)
    pip_extra = "sapiens"
    channels: ClassVar[int]  # of the model output, checked at load

    def __init__(self, options, config=None):
        super().__init__(options, config)
        self._model: Any = None
        self._dtype: Any = None
        self._checkpoint: str = ""
        self._autocast = False  # True: fp32 weights under torch.autocast (see `lower_precision`)
        self._host = HostBuffers(options.device)  # pinned, reused host buffers on CUDA

    def load(self) -> None:
        self._dtype = torch_utils.torch_dtype(self.options.resolved_precision)
        location = self.resolve_weights()
        path = location.file(location.spec.files[0])
        self._checkpoint = path.name
        self._model = load_torchscript(path, self.options.device)
        try:
            if self.options.resolved_precision in ("fp32", "tf32"):
                output = probe(self._model, self.options.device, self._dtype)
            else:
                self._model, self._autocast, output = lower_precision(self._model, path, self.options.device,
                                                                      self._dtype)
        except RuntimeError as exc:
            raise InfrastructureError(f"{self.name}: {path} fails on a (1, 3, {INPUT_SIZE[0]}, {INPUT_SIZE[1]}) "
                                      f"input: {first_line(exc)}") from exc
        check_channels(self.name, path, output, self.channels)
        self.chosen_batch = torch_utils.auto_batch_size(self.options.device,
                                                        bytes_per_item(self.options.resolved_precision),
                                                        requested=self.options.batch_size, cap=MAX_AUTO_BATCH)
        self._warm_up()
        log.info("%s: %s on %s (%s, batch %d)", self.name, path, self.options.device,
                 self.options.resolved_precision, self.chosen_batch)

    def _warm_up(self) -> None:
        """`warm_up` at the batch size the run will use; out of memory there halves it, as a batch would."""
        from stratum_core.errors import is_out_of_memory

        size = self.chosen_batch
        while True:
            try:
                warm_up(self._model, self.options.device, self._dtype, size, self._autocast)
                return
            except RuntimeError as exc:
                if size == 1 or not is_out_of_memory(exc):
                    raise InfrastructureError(f"{self.name}: warm-up at batch {size} failed: {first_line(exc)}") from exc
                reason = first_line(exc)
            self._halve_batch(size, reason)
            size = self.oom_limit

    def preprocess(self, item: Item) -> Prepared:
        return Prepared(self.shared_input(item), (item.bucket.height, item.bucket.width), self.foreground(item))

    def shared_input(self, item: Item) -> Any:
        """The normalised input, computed by the first Sapiens pass of the run and reused by the others."""
        pixels = item.scratch.get(SCRATCH_KEY)
        if pixels is None:
            pixels = prepare_input(item.crop, self.options.device, self._dtype)
            item.scratch[SCRATCH_KEY] = pixels
        return pixels.to(self._dtype)

    def foreground(self, item: Item) -> Any:
        """(bh, bw) bool tensor of seg > 0, or None for passes that do not need seg."""
        return None

    def forward(self, batch: list[Prepared]) -> list[np.ndarray | None]:
        """Run the model on the batch; per image the artifact array, or None for a non-finite output."""
        import torch

        device_type = torch.device(self.options.device).type
        with torch.autocast(device_type, dtype=self._dtype, enabled=self._autocast):
            raw = first_output(self._model(torch.stack([p.pixels for p in batch])))
        finite = torch.isfinite(raw).flatten(1).all(dim=1).tolist()
        results: list[np.ndarray | None] = [None] * len(batch)
        for size, indices in _group_by_size(batch).items():
            foreground = None
            if batch[indices[0]].foreground is not None:
                foreground = torch_utils.to_device(torch.stack([batch[i].foreground for i in indices]),
                                                   self.options.device)
            (arrays,) = self._host.to_numpy(self.finish(resize_to_bucket(raw[indices], size), foreground))
            for array, i in zip(arrays, indices):
                results[i] = array if finite[i] else None
        return results

    def finish(self, output: Any, foreground: Any) -> Any:
        """(N, C, bh, bw) float32 output → (N, ...) artifact values on the device, final dtype."""
        raise NotImplementedError

    def postprocess(self, outputs: list[np.ndarray | None], items: Sequence[Item]) -> list[Outcome]:
        return [Outcome.ok(**{self.name: array}) if array is not None
                else Outcome.failed("inference_error", f"{self.name} model gave non-finite values")
                for array in outputs]

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "file": self._checkpoint, "input_size": list(INPUT_SIZE),
                "autocast": self._autocast}

    def close(self) -> None:
        self._model = None


class SapiensSegPass(SapiensPass):
    """seg.npy: (bh, bw) uint8 body-part class ids 0-27 (names in `SEG_CLASSES`)."""

    name = "seg"
    default = True
    model = SEG_MODEL
    channels = NUM_CLASSES

    def finish(self, output: Any, foreground: Any) -> Any:
        return seg_ids(output)


class _NeedsSeg(SapiensPass):
    reads = ("seg",)

    def foreground(self, item: Item) -> Any:
        import torch

        seg = item.inputs.get("seg")
        expected = (item.bucket.height, item.bucket.width)
        if seg is None:
            raise ItemError("bad_input", "needs seg.npy")
        if tuple(seg.shape) != expected:
            raise ItemError("bad_input", f"seg.npy has shape {tuple(seg.shape)}, expected {expected}")
        return torch.from_numpy(np.asarray(seg) > 0)


class SapiensDepthPass(_NeedsSeg):
    """depth.npy: (bh, bw) float16, foreground min-max scaled to [0, 1], background 0."""

    name = "depth"
    default = True
    model = DEPTH_MODEL
    channels = 1
    # bf16 keeps 8 significant bits: near depths of 2-4 its step is 1/64, so one person spans only tens
    # of levels before min-max scaling, where float16 storage keeps ~2000 on [0, 1]. fp32 values with
    # TF32 matmuls keep the output in fp32 at half bf16's tensor-core rate (fp32 proper: ~1/15).
    auto_precision = "tf32"

    def finish(self, output: Any, foreground: Any) -> Any:
        import torch

        return scale_depth(output, foreground).to(torch.float16)


class SapiensNormalPass(_NeedsSeg):
    """normal.npy: (bh, bw, 3) float16 unit normals on the foreground, 0 on the background."""

    name = "normal"
    default = True
    model = NORMAL_MODEL
    channels = 3

    def finish(self, output: Any, foreground: Any) -> Any:
        import torch

        return unit_normals(output, foreground).to(torch.float16)


def _group_by_size(batch: Sequence[Prepared]) -> dict[tuple[int, int], list[int]]:
    """Indices of same-bucket images (the engine sends one bucket per batch; direct callers may not)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, prepared in enumerate(batch):
        groups.setdefault(prepared.size, []).append(i)
    return groups
