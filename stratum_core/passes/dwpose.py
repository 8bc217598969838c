"""The pose pass: DWPose whole-body keypoints (YOLOX-L detector + DWPose-L SimCC), on onnxruntime or torch.

Per image: letterbox → detector → person boxes → the largest person → 288×384 affine crop →
pose model → SimCC decode → bucket pixels → pose.npy (133, 3) float16: x, y in [−1, 1] of the
bucket (2x/bw − 1, 2y/bh − 1) and the confidence. No person gives zeros, a result, not an error.
Detector and pose calls are batched across the images of a batch where the model's batch
dimension is dynamic; a fixed batch dimension (often 1 in exported files) is honoured by chunking.

Backends (`--pose-backend`): onnxruntime runs the files as they are; torch runs them through
`onnx_torch` (no onnxruntime-gpu needed). `auto` takes onnxruntime unless the pass runs on CUDA and
onnxruntime has no working CUDA provider, then torch, and says so in the log and the provenance.
Channel order: the detector is fed BGR (mmdet's YOLOX was trained on OpenCV-loaded BGR images with
`bgr_to_rgb=False`), the pose model RGB (mmpose's `bgr_to_rgb=True`); see docs/pose.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from stratum_core import pose_geometry as geo
from stratum_core.artifacts import POSE_KEYPOINTS
from stratum_core.errors import ConfigError, InfrastructureError
from stratum_core.models import ModelSpec
from stratum_core.outcomes import Outcome
from stratum_core.passes.base import Item, Pass

log = logging.getLogger("stratum.pose")

DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
KEYPOINTS = POSE_KEYPOINTS
DETECTOR_COLUMNS = 85  # cx, cy, w, h, objectness, 80 COCO classes
POSE_INPUT_HW = (384, 288)  # used only when the file leaves the spatial dims symbolic
FLOAT16_MAX = float(np.finfo(np.float16).max)
# The number of people per batch (the pose model's batch) changes from batch to batch: the
# default EXHAUSTIVE cuDNN search would rerun for every new shape. The default arena grows in
# powers of two and never shrinks, which crowds out torch passes in the same process.
CUDA_PROVIDER_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}


def providers_for(device: str, available: Sequence[str]) -> list[Any]:
    """onnxruntime providers for a resolved device ("cpu" or "cuda:N")."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise InfrastructureError(
            f"the pose pass was asked to run on {device} but onnxruntime has no CUDAExecutionProvider "
            f"(available: {', '.join(available) or 'none'}); install onnxruntime-gpu "
            "(`pip install 'stratum[pose]'` on Linux x86_64) or use --device cpu")
    index = int(device.split(":")[1]) if ":" in device else 0
    return [("CUDAExecutionProvider", {"device_id": index, **CUDA_PROVIDER_OPTIONS}), "CPUExecutionProvider"]


BACKENDS = ("auto", "onnxruntime", "torch")
BACKEND_MODULES = {"onnxruntime": ("onnxruntime",), "torch": ("torch", "onnx")}


@dataclass(frozen=True)
class PoseConfig:
    """The pose pass's own options."""

    backend: str = "auto"  # auto | onnxruntime | torch

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"--pose-backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")


def choose_backend(requested: str, device: str, ort_providers: Sequence[str] | None) -> str:
    """The backend to run: `requested` unless it is `auto`; auto = onnxruntime, except on CUDA when
    onnxruntime is missing (`ort_providers` None) or has no CUDAExecutionProvider: then torch."""
    if requested != "auto":
        return requested
    if not device.startswith("cuda"):
        return "onnxruntime"
    return "onnxruntime" if ort_providers and "CUDAExecutionProvider" in ort_providers else "torch"


def _available_ort_providers() -> list[str] | None:
    """onnxruntime's providers, or None when it is not installed."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _static(dim: Any) -> int | None:
    """An ONNX dimension as an int, or None when it is symbolic or unknown."""
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxModel:
    """One onnxruntime session: names and shapes read from the file, batch-aware `run`."""

    def __init__(self, path: Path, providers: list[Any]):
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # ORT's own warnings are noise here; failures raise below
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own pybind types for bad files
            raise InfrastructureError(f"{self.path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from exc
        wanted_cuda = any(p == "CUDAExecutionProvider" or (isinstance(p, tuple) and p[0] == "CUDAExecutionProvider")
                          for p in providers)
        if wanted_cuda and "CUDAExecutionProvider" not in self.session.get_providers():
            raise InfrastructureError(
                f"{self.path}: onnxruntime could not start CUDA (it fell back to "
                f"{', '.join(self.session.get_providers())}); onnxruntime's log above names the CUDA/cuDNN "
                "libraries its build needs: install those, or use --device cpu")
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise InfrastructureError(f"{self.path}: expected one NCHW image input, found "
                                      f"{[(i.name, i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.fixed_batch = _static(self.input_shape[0])  # None: dynamic
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_shapes = [list(o.shape) for o in self.session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, batch: np.ndarray, max_batch: int) -> list[np.ndarray]:
        """(N, C, H, W) float32 → every output concatenated over N (chunked to the batch the file allows)."""
        step = self.fixed_batch or max(1, max_batch)
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(batch), step):
            chunk = batch[start:start + step]
            real = len(chunk)
            if self.fixed_batch and real < self.fixed_batch:  # pad a short last chunk of a fixed batch
                pad = np.zeros((self.fixed_batch - real, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate((chunk, pad))
            outputs = self.session.run(self.output_names, {self.input_name: chunk})
            parts.append([o[:real] for o in outputs])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(self.output_names))]


class Detector:
    """YOLOX wrapper: checks the file's shapes once, then finds the largest person per image."""

    def __init__(self, model: OnnxModel):
        self.model = model
        h, w = (_static(d) for d in model.input_shape[2:])
        if _static(model.input_shape[1]) not in (None, 3):
            raise InfrastructureError(f"{model.path}: detector input must have 3 channels, got {model.input_shape}")
        if (h or w) and h != w:
            raise InfrastructureError(f"{model.path}: detector input must be square, got {model.input_shape}")
        self.size = h or geo.DETECTOR_SIZE
        self.anchors = geo.anchor_count(self.size)
        if not model.output_shapes:
            raise InfrastructureError(f"{model.path}: the detector has no outputs")
        declared = model.output_shapes[0]
        expected = [None, self.anchors, DETECTOR_COLUMNS]
        if len(declared) != 3 or any(_static(d) not in (None, e) for d, e in zip(declared[1:], expected[1:])):
            raise InfrastructureError(f"{model.path}: detector output {model.output_names[0]} has shape "
                                      f"{declared}, expected (N, {self.anchors}, {DETECTOR_COLUMNS})")

    def largest_people(self, letterboxed: np.ndarray, ratios: Sequence[float], max_batch: int) -> list[np.ndarray | None]:
        """(N, 3, S, S) letterboxed images → per image the largest person box (4,) xyxy, or None."""
        raw = self.model.run(letterboxed, max_batch)[0]
        if raw.shape[1:] != (self.anchors, DETECTOR_COLUMNS):
            raise InfrastructureError(f"{self.model.path}: detector returned shape {raw.shape}, "
                                      f"expected (N, {self.anchors}, {DETECTOR_COLUMNS})")
        return [geo.largest_box(geo.person_boxes(r.astype(np.float32), ratio, self.size)[0])
                for r, ratio in zip(raw, ratios)]


class PoseModel:
    """DWPose wrapper: input size and which output is SimCC x / y are read from the file."""

    def __init__(self, model: OnnxModel):
        self.model = model
        h, w = (_static(d) for d in model.input_shape[2:])
        self.input_h, self.input_w = (h, w) if h and w else POSE_INPUT_HW
        if len(model.output_names) != 2:
            raise InfrastructureError(f"{model.path}: pose model must have 2 outputs (simcc_x, simcc_y), "
                                      f"found {model.output_names}")
        self.bins_x = int(self.input_w * geo.SIMCC_SPLIT_RATIO)
        self.bins_y = int(self.input_h * geo.SIMCC_SPLIT_RATIO)
        self.x_index, self.y_index = self._output_order()

    def _output_order(self) -> tuple[int, int]:
        """Which output is x: the one whose last dim is 2·W (order as a fallback when symbolic)."""
        last = [_static(s[-1]) if s else None for s in self.model.output_shapes]
        for shape in self.model.output_shapes:
            if len(shape) != 3 or _static(shape[1]) not in (None, KEYPOINTS):
                self._wrong_shape(shape)
        if last == [self.bins_y, self.bins_x] and self.bins_x != self.bins_y:
            return 1, 0
        if not all(d in (None, expected) for d, expected in zip(last, (self.bins_x, self.bins_y))):
            self._wrong_shape(self.model.output_shapes)
        return 0, 1

    def _wrong_shape(self, shape: Any) -> None:
        raise InfrastructureError(f"{self.model.path}: pose outputs have shape {shape}, expected "
                                  f"(N, {KEYPOINTS}, {self.bins_x}) and (N, {KEYPOINTS}, {self.bins_y})")

    def keypoints(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                  max_batch: int) -> list[np.ndarray]:
        """One (H, W, 3) uint8 image and (4,) box per person → (133, 3) rows of x, y (image px), score."""
        frames = [geo.box_to_center_scale(box, self.input_w, self.input_h) for box in boxes]
        crops = np.stack([geo.crop_person(img, c, s, self.input_w, self.input_h)
                          for img, (c, s) in zip(images, frames)])
        outputs = self.model.run(crops, max_batch)
        simcc_x, simcc_y = outputs[self.x_index], outputs[self.y_index]
        if simcc_x.shape[1:] != (KEYPOINTS, self.bins_x) or simcc_y.shape[1:] != (KEYPOINTS, self.bins_y):
            self._wrong_shape([simcc_x.shape, simcc_y.shape])
        locs, scores = geo.decode_simcc(simcc_x, simcc_y)
        return [np.concatenate((geo.crop_to_image(loc, c, s, self.input_w, self.input_h), score[:, None]), axis=1)
                for loc, score, (c, s) in zip(locs, scores, frames)]


@dataclass
class PosePrepared:
    """An image ready for the detector: the bucket crop and its 640² letterbox."""

    image: np.ndarray  # (bh, bw, 3) uint8 RGB (the pose model's order)
    letterboxed: np.ndarray  # (3, 640, 640) float32, raw 0–255, BGR (the detector's order)
    ratio: float  # detector pixels per image pixel


def pose_array(person: np.ndarray | None, bucket_w: int, bucket_h: int) -> np.ndarray:
    """(133, 3) x, y image px + score (or None) → the pose.npy array, float16, [−1, 1] coords."""
    if person is None:
        return np.zeros((KEYPOINTS, 3), dtype=np.float16)
    out = np.empty((KEYPOINTS, 3), dtype=np.float64)
    out[:, :2] = geo.to_unit_square(person[:, :2], bucket_w, bucket_h)
    out[:, 2] = person[:, 2]
    # Keypoints can fall far outside a tiny crop; clip so float16 never overflows to inf.
    return np.clip(np.nan_to_num(out), -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)


class DWPosePass(Pass):
    name = "pose"
    default = True
    version = "2"  # 2: detector fed BGR, crop matrix built from float32 points (bit-exact with the reference)
    requires_modules = ("cv2",)  # plus the backend's modules (BACKEND_MODULES), checked in check_requirements
    pip_extra = "pose"
    model = ModelSpec("yzd-v/DWPose", (DETECTOR_FILE, POSE_FILE))
    config_class = PoseConfig
    auto_precision = "fp32"  # the ONNX files are fp32 and SimCC argmax flips on small logit changes

    detector: Detector | None = None
    pose_model: PoseModel | None = None
    backend: str | None = None  # the backend load() chose

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--pose-backend", choices=BACKENDS, default="auto",
                            help="pose runtime: auto (onnxruntime; torch on CUDA when onnxruntime has no CUDA "
                                 "provider) | onnxruntime | torch")

    @classmethod
    def config_from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> PoseConfig:
        return PoseConfig(backend=getattr(args, "pose_backend", "auto") or "auto")

    def _backend(self) -> str:
        return choose_backend(self.config.backend, self.options.device, _available_ort_providers())

    def check_requirements(self) -> None:
        super().check_requirements()
        backend = self._backend()
        missing = [m for m in BACKEND_MODULES[backend] if importlib.util.find_spec(m) is None]
        if missing:
            raise InfrastructureError(f"the pose pass's {backend} backend needs {', '.join(missing)}: "
                                      f"pip install {' '.join(missing)}")
        if backend == "torch" and self.options.is_cuda:
            from stratum_core.devices import require_torch_cuda

            require_torch_cuda(self.options.device)

    @property
    def max_batch(self) -> int:
        return self.options.batch_size or (32 if self.options.is_cuda else 8)

    def load(self) -> None:
        location = self.resolve_weights()
        self.backend = self._backend()
        if self.config.backend == "auto" and self.backend == "torch":
            log.warning("pose: onnxruntime has no CUDA provider here; running the ONNX files on torch (%s) "
                        "instead of the CPU (--pose-backend onnxruntime to insist)", self.options.device)
        if self.backend == "onnxruntime":
            try:
                self._load_onnxruntime(location)
            except InfrastructureError as exc:
                if self.config.backend != "auto" or "could not start CUDA" not in str(exc):
                    raise
                # onnxruntime-gpu whose CUDA/cuDNN libraries do not match this machine's: torch can run it.
                log.warning("pose: %s; running the ONNX files on torch (%s) instead", exc, self.options.device)
                self.backend = "torch"
        if self.backend == "torch":
            from stratum_core.passes.onnx_torch import TorchOnnxModel

            precision = self.options.resolved_precision
            self.detector = Detector(TorchOnnxModel(location.file(DETECTOR_FILE), self.options.device, precision))
            self.pose_model = PoseModel(TorchOnnxModel(location.file(POSE_FILE), self.options.device, precision))
        log.info("pose: %s (batch %s) and %s (batch %s) on %s", DETECTOR_FILE,
                 self.detector.model.fixed_batch or "dynamic", POSE_FILE,
                 self.pose_model.model.fixed_batch or "dynamic", self.detector.model.providers[0])

    def _load_onnxruntime(self, location: Any) -> None:
        import onnxruntime as ort

        if self.options.resolved_precision != "fp32":
            log.warning("pose: onnxruntime runs the fp32 files in fp32 (--precision pose=%s needs "
                        "--pose-backend torch)", self.options.resolved_precision)
        if self.options.is_cuda and hasattr(ort, "preload_dlls"):
            try:  # finds the CUDA/cuDNN libraries pip wheels (e.g. torch's) installed
                ort.preload_dlls()
            except Exception as exc:  # noqa: BLE001 - best effort; session creation reports the real problem
                log.debug("onnxruntime.preload_dlls failed: %s", exc)
        providers = providers_for(self.options.device, ort.get_available_providers())
        self.detector = Detector(OnnxModel(location.file(DETECTOR_FILE), providers))
        self.pose_model = PoseModel(OnnxModel(location.file(POSE_FILE), providers))

    def preprocess(self, item: Item) -> PosePrepared:
        size = self.detector.size if self.detector else geo.DETECTOR_SIZE
        letterboxed, ratio = geo.letterbox(geo.rgb_to_bgr(item.crop), size)
        return PosePrepared(item.crop, letterboxed, ratio)

    def forward(self, batch: list[PosePrepared]) -> list[np.ndarray | None]:
        boxes = self.detector.largest_people(np.stack([p.letterboxed for p in batch]),
                                             [p.ratio for p in batch], self.max_batch)
        with_person = [i for i, box in enumerate(boxes) if box is not None]
        people: list[np.ndarray | None] = [None] * len(batch)
        if with_person:
            found = self.pose_model.keypoints([batch[i].image for i in with_person],
                                              [boxes[i] for i in with_person], self.max_batch)
            for i, person in zip(with_person, found):
                people[i] = person
        return people

    def postprocess(self, outputs: list[np.ndarray | None], items: Sequence[Item]) -> list[Outcome]:
        return [Outcome.ok(pose=pose_array(person, item.bucket.width, item.bucket.height))
                for person, item in zip(outputs, items)]

    def provenance(self) -> dict[str, Any]:
        record = super().provenance()
        if self.backend != "torch":
            record["precision"] = "fp32"  # onnxruntime runs the fp32 files as they are
        if self.detector is not None:
            record["backend"] = self.backend
            record["providers"] = self.detector.model.providers
            record["files"] = [DETECTOR_FILE, POSE_FILE]
        return record

    def close(self) -> None:
        self.detector = None
        self.pose_model = None
