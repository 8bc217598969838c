"""Hand-built DWPose ONNX files with the real input/output shapes and predictable outputs.

`build_detector(path, boxes=...)` writes a YOLOX-shaped detector ((N, 3, 640, 640) →
(N, 8400, 85)) that reports exactly the given boxes; `build_pose_model(path, peaks=...)` writes a
DWPose-shaped model ((N, 3, 384, 288) → simcc_x (N, 133, 576), simcc_y (N, 133, 768)) whose
SimCC outputs peak at the given bins. `build_dwpose_folder(folder)` writes both under their
real file names, ready for `--model pose=<folder>`. Outputs do not depend on the pixels unless
`gate_on_corner=True` (then every detection's objectness is scaled by channel 0 of the input's
top-left pixel / 255 — blue, since the pose pass feeds the detector BGR — so a black corner means
"no person" — lets one batch mix both cases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
DET_SIZE = 640
STRIDES = (8, 16, 32)
ANCHORS = sum((DET_SIZE // s) ** 2 for s in STRIDES)  # 8400
COLUMNS = 85
KEYPOINTS = 133
POSE_H, POSE_W = 384, 288
OPSET = 17


@dataclass(frozen=True)
class FakeBox:
    """A detection in detector-input pixels (640² letterbox space), xyxy, with its class and score."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 0.9
    class_id: int = 0


def _anchor_index(cx: float, cy: float, stride: int) -> tuple[int, int, int]:
    """Index into the 8400 anchors of the stride-`stride` cell holding (cx, cy), and the cell."""
    offset = 0
    for s in STRIDES:
        if s == stride:
            break
        offset += (DET_SIZE // s) ** 2
    cells = DET_SIZE // stride
    col, row = int(cx // stride), int(cy // stride)
    return offset + row * cells + col, col, row


def detector_rows(boxes: Sequence[FakeBox]) -> np.ndarray:
    """The (8400, 85) raw YOLOX output that decodes to exactly `boxes` (objectness = score, class = 1).

    Each box sits in the stride-32 cell holding its centre, or a finer stride's cell when taken.
    """
    rows = np.zeros((ANCHORS, COLUMNS), dtype=np.float32)
    used: set[int] = set()
    for box in boxes:
        cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
        for stride in reversed(STRIDES):
            index, col, row = _anchor_index(cx, cy, stride)
            if index not in used:
                break
        used.add(index)
        rows[index, :5] = (cx / stride - col, cy / stride - row, math.log((box.x2 - box.x1) / stride),
                           math.log((box.y2 - box.y1) / stride), box.score)
        rows[index, 5 + box.class_id] = 1.0
    return rows


def _batch_dim(batch: int | None) -> int | str:
    return batch if batch else "N"


def _constant_model(path: Path, input_name: str, input_shape: list, outputs: dict[str, np.ndarray],
                    declared: dict[str, list], gate: np.ndarray | None = None) -> Path:
    """A graph whose outputs are constants broadcast over the input's batch dimension.

    Each output = zeros(N, 1, 1) (from a slice of the input) + constant; with `gate` (same shape
    as the constant, 1 where a value must scale), those entries are multiplied by pixel[0, 0, 0] / 255.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Slice", [input_name, "s_start", "s_end", "s_axes"], ["corner"]),  # (N,1,1,1)
        helper.make_node("Reshape", ["corner", "s_shape"], ["corner3"]),  # (N,1,1)
        helper.make_node("Mul", ["corner3", "zero"], ["zeros"]),
        helper.make_node("Mul", ["corner3", "inv255"], ["level"]),
    ]
    inits = [
        numpy_helper.from_array(np.zeros(3, np.int64), "s_start"),
        numpy_helper.from_array(np.ones(3, np.int64), "s_end"),
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "s_axes"),
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "s_shape"),
        numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        numpy_helper.from_array(np.array(1 / 255, np.float32), "inv255"),
    ]
    graph_outputs = []
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value[None].astype(np.float32), f"{name}_const"))
        if gate is None:
            nodes.append(helper.make_node("Add", ["zeros", f"{name}_const"], [name]))
        else:
            # out = const * (1 - gate) + const * gate * level
            inits.append(numpy_helper.from_array((value * (1 - gate))[None].astype(np.float32), f"{name}_fixed"))
            inits.append(numpy_helper.from_array((value * gate)[None].astype(np.float32), f"{name}_gated"))
            nodes.append(helper.make_node("Mul", ["level", f"{name}_gated"], [f"{name}_scaled"]))
            nodes.append(helper.make_node("Add", [f"{name}_scaled", f"{name}_fixed"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, declared[name]))
    graph = helper.make_graph(nodes, "fake", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
                              graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_detector(path: Path, boxes: Sequence[FakeBox] = (), *, batch: int | None = None,
                   anchors: int = ANCHORS, columns: int = COLUMNS, gate_on_corner: bool = False) -> Path:
    """A YOLOX-L-shaped detector reporting `boxes`; input "images" (N|batch, 3, 640, 640).

    `anchors`/`columns` other than 8400/85 give a wrong-shaped file for error tests.
    """
    rows = detector_rows(boxes)
    if (anchors, columns) != (ANCHORS, COLUMNS):
        rows = np.zeros((anchors, columns), np.float32)
    gate = None
    if gate_on_corner:
        gate = np.zeros_like(rows)
        gate[:, 4] = 1.0
    n = _batch_dim(batch)
    return _constant_model(path, "images", [n, 3, DET_SIZE, DET_SIZE], {"output": rows},
                           {"output": [n, anchors, columns]}, gate)


def simcc_logits(x_bins: Sequence[int], y_bins: Sequence[int], x_peaks: Sequence[float],
                 y_peaks: Sequence[float], bins_x: int = 2 * POSE_W, bins_y: int = 2 * POSE_H,
                 background: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """(133, bins_x), (133, bins_y) logits: `background` everywhere, keypoint k peaking at its bin."""
    simcc_x = np.full((KEYPOINTS, bins_x), background, np.float32)
    simcc_y = np.full((KEYPOINTS, bins_y), background, np.float32)
    k = np.arange(KEYPOINTS)
    simcc_x[k, np.asarray(x_bins)] = x_peaks
    simcc_y[k, np.asarray(y_bins)] = y_peaks
    return simcc_x, simcc_y


def default_peaks() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct, spread-out bins and scores for the 133 keypoints: (x_bins, y_bins, x_peaks, y_peaks)."""
    k = np.arange(KEYPOINTS)
    return (k * 4 + 10, k * 5 + 20, 0.5 + 0.003 * k, 0.9 - 0.002 * k)


def build_pose_model(path: Path, peaks: tuple | None = None, *, batch: int | None = None,
                     bins_x: int = 2 * POSE_W, bins_y: int = 2 * POSE_H, swap_outputs: bool = False) -> Path:
    """A DWPose-L-shaped model; input "input" (N|batch, 3, 384, 288), outputs simcc_x, simcc_y.

    `peaks` = (x_bins, y_bins, x_peaks, y_peaks), each of length 133 (default `default_peaks()`).
    `bins_x`/`bins_y` other than 576/768 give a wrong-shaped file; `swap_outputs` lists simcc_y first.
    """
    x_bins, y_bins, x_peaks, y_peaks = peaks if peaks is not None else default_peaks()
    if (bins_x, bins_y) == (2 * POSE_W, 2 * POSE_H):
        simcc_x, simcc_y = simcc_logits(x_bins, y_bins, x_peaks, y_peaks)
    else:
        simcc_x, simcc_y = np.zeros((KEYPOINTS, bins_x), np.float32), np.zeros((KEYPOINTS, bins_y), np.float32)
    n = _batch_dim(batch)
    outputs = {"simcc_y": simcc_y, "simcc_x": simcc_x} if swap_outputs else {"simcc_x": simcc_x, "simcc_y": simcc_y}
    return _constant_model(path, "input", [n, 3, POSE_H, POSE_W], outputs,
                           {"simcc_x": [n, KEYPOINTS, bins_x], "simcc_y": [n, KEYPOINTS, bins_y]})


def build_dwpose_folder(folder: Path, boxes: Sequence[FakeBox] = (FakeBox(200, 100, 392, 500),),
                        peaks: tuple | None = None, *, batch: int | None = None,
                        gate_on_corner: bool = False) -> Path:
    """Both files under their real names in `folder` (the `yzd-v/DWPose` layout); returns `folder`."""
    folder = Path(folder)
    build_detector(folder / DETECTOR_FILE, boxes, batch=batch, gate_on_corner=gate_on_corner)
    build_pose_model(folder / POSE_FILE, peaks, batch=batch)
    return folder
