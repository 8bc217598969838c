"""Per-pass precision: `--precision bf16,depth=fp32`, each pass's own `auto`, and what a pass sees."""

from __future__ import annotations

import pytest

from stratum_core.errors import ConfigError
from stratum_core.passes import MODEL_PASSES, build_passes
from stratum_core.passes.base import PassOptions, parse_precision


@pytest.mark.parametrize("spec, parsed", [
    ("auto", ("auto", {})),
    ("bf16", ("bf16", {})),
    ("depth=fp32", ("auto", {"depth": "fp32"})),
    ("bf16, depth=fp32,pose=fp32", ("bf16", {"depth": "fp32", "pose": "fp32"})),
])
def test_a_precision_spec_is_a_plain_value_and_per_pass_entries(spec, parsed):
    assert parse_precision(spec) == parsed


@pytest.mark.parametrize("spec, message", [
    ("fp8", "got 'fp8'"),
    ("depth=int4", "got 'depth=int4'"),
    ("dpeth=fp32", "unknown pass 'dpeth'"),
])
def test_a_bad_precision_spec_is_refused_before_any_work(spec, message):
    with pytest.raises(ConfigError, match=message):
        PassOptions(precision=spec)


def precisions(spec: str, device: str) -> dict[str, str]:
    """Each model pass's resolved precision for `--precision spec` on `device`."""
    options = PassOptions(device=device, precision=spec)
    return {p.name: p.options.resolved_precision for p in build_passes(MODEL_PASSES, options)}


def test_auto_on_cuda_is_bf16_except_depth_tf32_and_pose_fp32():
    assert precisions("auto", "cuda:0") == {"dinov3": "bf16", "t5": "bf16", "pose": "fp32", "seg": "bf16",
                                            "depth": "tf32", "normal": "bf16"}


def test_auto_on_the_cpu_is_fp32_everywhere():
    assert set(precisions("auto", "cpu").values()) == {"fp32"}


def test_a_plain_value_applies_to_every_pass_and_an_entry_overrides_it():
    assert set(precisions("bf16", "cuda:0").values()) == {"bf16"}
    chosen = precisions("bf16,depth=fp32,seg=fp16", "cuda:0")
    assert (chosen["depth"], chosen["seg"], chosen["normal"]) == ("fp32", "fp16", "bf16")


def test_an_entry_for_one_pass_leaves_the_others_on_their_own_auto():
    chosen = precisions("depth=bf16", "cuda:0")
    assert (chosen["depth"], chosen["seg"], chosen["pose"]) == ("bf16", "bf16", "fp32")


def test_a_tf32_pass_turns_tf32_matmuls_on_for_its_forward_only():
    torch = pytest.importorskip("torch")
    from stratum_core.passes.sapiens import SapiensDepthPass, SapiensSegPass

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with SapiensDepthPass(PassOptions(device="cuda:0")).inference_context():  # auto: tf32 (flags only: no GPU used)
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
            assert torch.is_inference_mode_enabled()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        with SapiensSegPass(PassOptions(device="cuda:0")).inference_context():  # bf16: untouched
            assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
