"""Smoke-test Sapiens TorchScript checkpoints whose outputs are predictable, under the real file names.

`build_sapiens_models(model_dir)` lays out $STRATUM_MODEL_DIR/<hub id>/<file>.pt2 for seg, depth
and normal (torch.jit.script + torch.jit.save, the real format). What they compute, on the
normalised (N, 3, 1024, 768) input:

- seg (N, 28, H/2, W/2), the real seg resolution: class `RED_CLASS` where the 2×2-pooled pixel
  is red (redness above the midpoint between pure red and mid grey), Background elsewhere.
- depth (N, 1, H/8, W/8): the column position, 0 at the left edge to 1 at the right (`flat`:
  the constant 3.0 everywhere).
- normal (N, 3, H/4, W/4): 5 × the 4×4-pooled normalised RGB (not unit length on purpose).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from stratum_core.passes.sapiens import DEPTH_MODEL, MEAN, NORMAL_MODEL, SEG_MODEL, STD

RED_CLASS = 21  # Torso
NUM_CLASSES = 28
RED = (255, 0, 0)
GREY = (128, 128, 128)  # the background of the test images
SEG_STRIDE, DEPTH_STRIDE, NORMAL_STRIDE = 2, 8, 4


def normalised(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """An RGB colour as the model sees it."""
    return tuple((v - m) / s for v, m, s in zip(rgb, MEAN, STD))


def redness(rgb: tuple[int, int, int]) -> float:
    r, g, b = normalised(rgb)
    return r - 0.5 * (g + b)


class RedSeg(torch.nn.Module):
    """Logits: 0 for Background, (redness − threshold) for RED_CLASS, −10 for every other class."""

    def __init__(self, stride: int, threshold: float, red_class: int):
        super().__init__()
        self.stride = stride
        self.threshold = threshold
        self.red_class = red_class
        self.num_classes = NUM_CLASSES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, self.stride)
        score = pooled[:, 0:1] - 0.5 * (pooled[:, 1:2] + pooled[:, 2:3]) - self.threshold
        others = torch.full_like(score, -10.0)
        channels = [torch.zeros_like(score)] + [others] * (self.red_class - 1) + [score] \
            + [others] * (self.num_classes - 1 - self.red_class)
        return torch.cat(channels, dim=1)


class ColumnDepth(torch.nn.Module):
    """(N, 1, H/stride, W/stride): column position in [0, 1], or `flat` everywhere when flat > 0."""

    def __init__(self, stride: int, flat: float):
        super().__init__()
        self.stride = stride
        self.flat = flat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w = x.shape[0], x.shape[2] // self.stride, x.shape[3] // self.stride
        columns = torch.arange(w, dtype=x.dtype, device=x.device) / (w - 1)
        depth = columns.view(1, 1, 1, w).expand(n, 1, h, w)
        if self.flat > 0:
            depth = torch.full_like(depth, self.flat)
        return depth.contiguous()


class PooledNormal(torch.nn.Module):
    """(N, 3, H/stride, W/stride): 5 × the pooled normalised RGB."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 5.0 * F.avg_pool2d(x, self.stride)


def model_path(model_dir: Path, pass_name: str) -> Path:
    spec = {"seg": SEG_MODEL, "depth": DEPTH_MODEL, "normal": NORMAL_MODEL}[pass_name]
    return Path(model_dir) / spec.hub_id / spec.files[0]


def save_scripted(module: torch.nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # TorchScript is deprecated in torch, but it is the real checkpoints' format
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def build_sapiens_models(model_dir: Path, *, flat_depth: bool = False) -> dict[str, Path]:
    """Write the three smoke checkpoints under `model_dir`; returns pass name → file."""
    threshold = 0.5 * (redness(RED) + redness(GREY))
    modules = {
        "seg": RedSeg(SEG_STRIDE, threshold, RED_CLASS),
        "depth": ColumnDepth(DEPTH_STRIDE, 3.0 if flat_depth else 0.0),
        "normal": PooledNormal(NORMAL_STRIDE),
    }
    return {name: save_scripted(module, model_path(model_dir, name)) for name, module in modules.items()}


def write_not_torchscript(path: Path) -> Path:
    """A plain torch.save'd state dict under a checkpoint name: loads with torch.load, not torch.jit.load."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(2)}, str(path))
    return path


def build_model_dirs_with_two_seg_checkpoints(first: Path, second: Path) -> tuple[Path, Path]:
    """Two model dirs of these smoke models that differ only in the seg weights (same file name)."""
    build_sapiens_models(first)
    shutil.copytree(first, second, dirs_exist_ok=True)
    threshold = 0.5 * (redness(RED) + redness(GREY)) + 0.01
    save_scripted(RedSeg(SEG_STRIDE, threshold, RED_CLASS), model_path(second, "seg"))
    return first, second
