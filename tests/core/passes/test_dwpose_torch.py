"""Tests of the pose pass's torch backend: the ONNX → torch interpreter against onnxruntime.

Tolerances: on the smoke DWPose graphs the two backends must give identical pose.npy arrays
(the graphs are exact constant arithmetic); single operators on random inputs must agree to
rtol 1e-4, atol 1e-5 (float32 kernels differ only in summation order).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from stratum_core.errors import InfrastructureError
from stratum_core.passes.base import PassOptions
from stratum_core.passes.dwpose import DWPosePass, PoseConfig, choose_backend
from stratum_core.passes.onnx_torch import SUPPORTED_OPS, TorchOnnxModel, build_module, unsupported_ops
from tests.core.passes.test_dwpose import LANDSCAPE, SQUARE, make_item
from stratum_testing.dwpose_models import FakeBox, build_dwpose_folder

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RNG = np.random.default_rng(0)


def weight(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.5).astype(np.float32)


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def graph_model(nodes: list, inputs: dict[str, list], initializers: dict[str, np.ndarray], outputs: list[str],
                opset: int = 17):
    """A model of `nodes` with float inputs of the given shapes (the first dim symbolic: "N")."""
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", *shape[1:]]) for n, shape in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # outputs are left untyped: onnxruntime infers them, onnx's checker would refuse
    return model


def node(op: str, inputs: list[str], outputs: list[str] | str = "y", **attrs):
    return helper.make_node(op, inputs, [outputs] if isinstance(outputs, str) else outputs, **attrs)


X = (3, 4, 8, 6)  # N, C, H, W
# (id, nodes, extra initializers, outputs): each graph reads "x" of shape X.
CASES = [
    ("conv_bias_pads_stride", [node("Conv", ["x", "w", "b"], pads=[1, 1, 1, 1], strides=[2, 2])],
     {"w": weight(5, 4, 3, 3), "b": weight(5)}, ["y"]),
    ("conv_grouped_asymmetric_pads", [node("Conv", ["x", "w"], pads=[0, 1, 1, 0], group=2)],
     {"w": weight(6, 2, 2, 2)}, ["y"]),
    ("conv_transpose", [node("ConvTranspose", ["x", "w", "b"], strides=[2, 2])],
     {"w": weight(4, 3, 2, 2), "b": weight(3)}, ["y"]),
    ("batchnorm_silu", [node("BatchNormalization", ["x", "s", "bb", "m", "v"], "t", epsilon=1e-3),
                        node("Sigmoid", ["t"], "g"), node("Mul", ["t", "g"])],
     {"s": weight(4), "bb": weight(4), "m": weight(4), "v": np.abs(weight(4)) + 0.5}, ["y"]),
    ("maxpool_spp_same", [node("MaxPool", ["x"], kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=[1, 1])], {}, ["y"]),
    ("maxpool_stride_ceil", [node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)], {}, ["y"]),
    ("averagepool", [node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], {}, ["y"]),
    ("global_pool_hardsigmoid_attention",
     [node("GlobalAveragePool", ["x"], "p"), node("Conv", ["p", "w", "b"], "a"), node("HardSigmoid", ["a"], "h"),
      node("Mul", ["x", "h"])], {"w": weight(4, 4, 1, 1), "b": weight(4)}, ["y"]),
    ("resize_nearest_x2", [node("Resize", ["x", "", "sc"], mode="nearest")],
     {"sc": np.array([1, 1, 2, 2], np.float32)}, ["y"]),
    ("resize_nearest_sizes_asymmetric_floor",
     [node("Resize", ["x", "", "", "sz"], mode="nearest", coordinate_transformation_mode="asymmetric",
           nearest_mode="floor")], {"sz": ints(3, 4, 16, 12)}, ["y"]),
    ("resize_bilinear_half_pixel", [node("Resize", ["x", "", "sc"], mode="linear")],
     {"sc": np.array([1, 1, 2, 2], np.float32)}, ["y"]),
    ("concat_split_add", [node("Split", ["x", "sp"], ["a", "b"], axis=1), node("Add", ["a", "b"], "c"),
                          node("Concat", ["c", "a"], axis=1)], {"sp": ints(2, 2)}, ["y"]),
    ("slice_focus_steps", [node("Slice", ["x", "st", "en", "ax", "stp"])],
     {"st": ints(0, 1), "en": ints(2**62, 2**62), "ax": ints(2, 3), "stp": ints(2, 2)}, ["y"]),
    ("slice_negative", [node("Slice", ["x", "st", "en", "ax"])],
     {"st": ints(-3), "en": ints(-1), "ax": ints(-1)}, ["y"]),
    ("reshape_transpose_softmax",
     [node("Reshape", ["x", "shp"], "r"), node("Transpose", ["r"], "t", perm=[0, 2, 1]), node("Softmax", ["t"], axis=-1)],
     {"shp": ints(0, 4, -1)}, ["y"]),
    ("flatten_gemm", [node("Flatten", ["x"], "f", axis=1), node("Gemm", ["f", "w", "b"], transB=1, alpha=0.5)],
     {"w": weight(7, 4 * 8 * 6), "b": weight(7)}, ["y"]),
    ("matmul_linear_layer_norm",
     [node("MatMul", ["x", "w"], "m"), node("Add", ["m", "b"], "a"),
      node("LayerNormalization", ["a", "g", "bt"], axis=-1, epsilon=1e-5)],
     {"w": weight(6, 5), "b": weight(5), "g": weight(5), "bt": weight(5)}, ["y"]),
    ("scale_norm_l2", [node("ReduceL2", ["x"], "n", axes=[-1], keepdims=1), node("Clip", ["n", "lo"], "c"),
                       node("Div", ["x", "c"], "d"), node("Mul", ["d", "g"])],
     {"lo": np.array(1e-5, np.float32), "g": weight(1)}, ["y"]),
    ("gau_kernel_relu_square", [node("MatMul", ["x", "xt"], "q"), node("Div", ["q", "s"], "d"),
                                node("Relu", ["d"], "r"), node("Pow", ["r", "two"])],
     {"xt": weight(6, 6), "s": np.array(2.5, np.float32), "two": np.array(2.0, np.float32)}, ["y"]),
    ("reductions", [node("ReduceMean", ["x"], "a", axes=[1], keepdims=1), node("ReduceSum", ["x", "ax"], "b", keepdims=1),
                    node("ReduceMax", ["x"], "c", axes=[1], keepdims=1), node("Sub", ["a", "b"], "d"),
                    node("Add", ["d", "c"])], {"ax": ints(1)}, ["y"]),
    ("unsqueeze_squeeze_expand", [node("Unsqueeze", ["x", "ax"], "u"), node("Expand", ["u", "shp"], "e"),
                                  node("Squeeze", ["e", "ax"], "s"), node("Sqrt", ["s"], "q"), node("Exp", ["q"])],
     {"ax": ints(1), "shp": ints(1, 1, 1, 1, 1)}, ["y"]),
    ("dynamic_shape_reshape", [node("Shape", ["x"], "s"), node("Gather", ["s", "i0"], "n"),
                               node("Unsqueeze", ["n", "ax0"], "n1"), node("Concat", ["n1", "rest"], "shape", axis=0),
                               node("Reshape", ["x", "shape"], "r"), node("Cast", ["r"], to=TensorProto.FLOAT)],
     {"i0": np.array(0, np.int64), "ax0": ints(0), "rest": ints(-1)}, ["y"]),
    ("constant_node_and_where", [node("Constant", [], "k", value=numpy_helper.from_array(np.array(0.25, np.float32))),
                                 node("Greater", ["x", "k"], "m"), node("Neg", ["x"], "n"), node("Where", ["m", "x", "n"])],
     {}, ["y"]),
    ("two_outputs", [node("Tanh", ["x"], "y"), node("Erf", ["x"], "z")], {}, ["y", "z"]),
    ("pad_constant_dropout", [node("Pad", ["x", "p", "v"], "q"), node("Dropout", ["q"])],
     {"p": ints(0, 0, 1, 2, 0, 0, 2, 1), "v": np.array(0.5, np.float32)}, ["y"]),
]


def run_both(model, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})
    with torch.inference_mode():
        got = [t.numpy() for t in build_module(model)(torch.from_numpy(x))]
    return expected, got


@pytest.mark.parametrize("nodes, inits, outputs", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_operator_pattern_of_the_dwpose_graphs_matches_onnxruntime(nodes, inits, outputs):
    x = np.abs(RNG.standard_normal(X)).astype(np.float32) + 0.1
    x[:, :, 0, 0] *= -1  # some negatives, for Where / Relu
    expected, got = run_both(graph_model(nodes, {"x": list(X)}, inits, outputs), x)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_softmax_before_opset_13_runs_over_every_axis_from_its_axis_on():
    nodes = [node("Softmax", ["x"], axis=1)]
    x = RNG.standard_normal(X).astype(np.float32)
    expected, got = run_both(graph_model(nodes, {"x": list(X)}, {}, ["y"], opset=11), x)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[0].reshape(3, -1).sum(1), 1.0, rtol=1e-5)  # one row per image, not per channel


def test_every_operator_the_cases_use_is_in_the_supported_list():
    used = {n.op_type for _, nodes, _, _ in CASES for n in nodes}
    assert used <= SUPPORTED_OPS
    assert {"Conv", "Sigmoid", "Mul", "MaxPool", "Resize", "Concat", "Slice", "Reshape", "Transpose",
            "HardSigmoid", "GlobalAveragePool", "MatMul", "Softmax", "ReduceL2"} <= used


def test_a_graph_with_an_unsupported_operator_is_refused_naming_the_operator(tmp_path):
    model = graph_model([node("Relu", ["x"], "r"), node("LpNormalization", ["r"])], {"x": list(X)}, {}, ["y"])
    assert unsupported_ops(model) == ["LpNormalization"]
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    with pytest.raises(InfrastructureError, match="LpNormalization.*--pose-backend onnxruntime"):
        TorchOnnxModel(path, "cpu")


def test_a_file_that_is_not_onnx_is_an_infrastructure_error(tmp_path):
    path = tmp_path / "yolox_l.onnx"
    path.write_bytes(b"\x00not a model")
    with pytest.raises(InfrastructureError, match="not a loadable ONNX model"):
        TorchOnnxModel(path, "cpu")


def test_a_file_declaring_batch_1_batches_freely_when_its_graph_allows(tmp_path):
    folder = build_dwpose_folder(tmp_path / "m", batch=1)
    assert TorchOnnxModel(folder / "yolox_l.onnx", "cpu").fixed_batch is None


def test_a_graph_that_bakes_batch_1_into_a_reshape_keeps_its_declared_batch(tmp_path):
    graph = helper.make_graph(
        [node("Reshape", ["x", "shp"], "r"), node("Relu", ["r"])], "baked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 48])],
        [numpy_helper.from_array(ints(1, -1), "shp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "baked.onnx"
    onnx.save(model, str(path))
    runner = TorchOnnxModel(path, "cpu")
    assert runner.fixed_batch == 1
    batch = RNG.standard_normal((3, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(runner.run(batch, max_batch=8)[0], np.maximum(batch.reshape(3, 48), 0), rtol=1e-6)


def loaded(folder: Path, backend: str, **options) -> DWPosePass:
    p = DWPosePass(PassOptions(model_paths={"pose": folder}, offline=True, **options), PoseConfig(backend))
    p.check_requirements()
    p.load()
    return p


@pytest.mark.parametrize("batch", [None, 1, 4], ids=["dynamic", "fixed-1", "fixed-4"])
def test_torch_backend_gives_the_onnxruntime_keypoints_exactly(tmp_path, batch):
    boxes = (FakeBox(200, 100, 392, 500, 0.9), FakeBox(30, 40, 90, 200, 0.7))
    folder = build_dwpose_folder(tmp_path / "m", boxes=boxes, batch=batch, gate_on_corner=True)
    items = [make_item(SQUARE, "a"), make_item(LANDSCAPE, "b", corner=0), make_item(LANDSCAPE, "c"),
             make_item(SQUARE, "d", corner=200), make_item(SQUARE, "e", corner=0)]
    results = {b: [o.values["pose"] for o in loaded(folder, b).run_batch(items)] for b in ("onnxruntime", "torch")}
    for ours, reference in zip(results["torch"], results["onnxruntime"]):
        np.testing.assert_array_equal(ours, reference)
    assert (results["torch"][1] == 0).all() and (results["torch"][0] != 0).any()


def test_provenance_names_the_backend_and_precision(tmp_path):
    folder = build_dwpose_folder(tmp_path / "m")
    record = loaded(folder, "torch").provenance()
    assert record["backend"] == "torch" and record["precision"] == "fp32"
    assert record["providers"] == ["torch (cpu, float32)"]
    assert loaded(folder, "onnxruntime").provenance()["backend"] == "onnxruntime"


@pytest.mark.parametrize("requested, device, providers, chosen", [
    ("auto", "cpu", ["CPUExecutionProvider"], "onnxruntime"),
    ("auto", "cuda:0", ["CUDAExecutionProvider", "CPUExecutionProvider"], "onnxruntime"),
    ("auto", "cuda:0", ["CPUExecutionProvider"], "torch"),
    ("auto", "cuda:1", None, "torch"),  # onnxruntime not installed
    ("onnxruntime", "cuda:0", ["CPUExecutionProvider"], "onnxruntime"),  # asked for: load() then fails loudly
    ("torch", "cpu", ["CPUExecutionProvider"], "torch"),
])
def test_backend_choice(requested, device, providers, chosen):
    assert choose_backend(requested, device, providers) == chosen


def test_pose_backend_option_reaches_the_pass_config():
    parser = argparse.ArgumentParser()
    DWPosePass.add_arguments(parser)
    assert DWPosePass.config_from_args(parser.parse_args(["--pose-backend", "torch"]), {}) == PoseConfig("torch")
    assert DWPosePass.config_from_args(parser.parse_args([]), {}) == PoseConfig("auto")
    with pytest.raises(Exception):
        PoseConfig("tensorrt")


@pytest.mark.gpu
def test_auto_on_cuda_without_onnxruntime_cuda_runs_on_torch_on_the_gpu(tmp_path):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime has CUDA here: auto keeps it")
    folder = build_dwpose_folder(tmp_path / "m")
    p = loaded(folder, "auto", device="cuda:0")
    assert p.backend == "torch" and p.provenance()["providers"][0].startswith("torch (cuda:0")
    reference = loaded(folder, "onnxruntime").run_batch([make_item(SQUARE)])[0].values["pose"]
    np.testing.assert_array_equal(p.run_batch([make_item(SQUARE)])[0].values["pose"], reference)


def test_intermediate_values_are_released_after_their_last_reader():
    nodes = [node("Relu", ["x"], "a"), node("Sigmoid", ["a"], "b"), node("Mul", ["a", "b"], "c"), node("Neg", ["c"])]
    module = build_module(graph_model(nodes, {"x": list(X)}, {}, ["y"]))
    # "a" is read last by Mul (node 2), "b" too; "c" by Neg (node 3); the input "x" by Relu (node 0).
    assert [sorted(d) for d in module._free_after] == [["x"], [], ["a", "b"], ["c"]]


class CudaWontStart:
    """Stands in for onnxruntime-gpu built against other CUDA/cuDNN libraries than the machine's."""

    def __init__(self, path, providers):
        raise InfrastructureError(f"{path}: onnxruntime could not start CUDA (it fell back to CPUExecutionProvider)")


def test_auto_moves_to_torch_when_onnxruntime_cannot_start_cuda(tmp_path, monkeypatch):
    from stratum_core.passes import dwpose

    folder = build_dwpose_folder(tmp_path / "m")
    reference = loaded(folder, "onnxruntime").run_batch([make_item(SQUARE)])[0].values["pose"]
    monkeypatch.setattr(dwpose, "OnnxModel", CudaWontStart)
    p = loaded(folder, "auto")
    assert p.backend == "torch" and p.provenance()["backend"] == "torch"
    np.testing.assert_array_equal(p.run_batch([make_item(SQUARE)])[0].values["pose"], reference)
    with pytest.raises(InfrastructureError, match="could not start CUDA"):
        loaded(folder, "onnxruntime")  # asked for by name: no switching
