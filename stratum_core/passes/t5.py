"""The t5 pass: T5-large encoder hidden states of each image's caption, padded to 512 tokens."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from stratum_core.artifacts import T5_TOKENS, T5_WIDTH
from stratum_core.errors import InfrastructureError, ItemError
from stratum_core.models import ModelLocation, ModelSpec
from stratum_core.outcomes import Outcome
from stratum_core.passes.base import Item, Pass

log = logging.getLogger("stratum.t5")

MAX_LENGTH = T5_TOKENS
WIDTH = T5_WIDTH
FLOAT16_MAX = 65504.0


def compute_precision(resolved: str, is_cuda: bool, bf16_supported: bool) -> str:
    """The precision T5 actually computes in.

    T5 was trained in bf16 and its feed-forward activations overflow float16 (inf/NaN
    hidden states), so a requested fp16 computes in bf16 where the GPU has it and in
    fp32 otherwise; the output is still stored as float16.
    """
    if resolved != "fp16":
        return resolved
    return "bf16" if is_cuda and bf16_supported else "fp32"


def tokenize(tokenizer: Any, text: str) -> tuple[np.ndarray, np.ndarray]:
    """One caption → (input_ids (512,) int64, attention_mask (512,) int64): padded to 512, truncated."""
    encoded = tokenizer(text, max_length=MAX_LENGTH, padding="max_length", truncation=True, return_tensors="np")
    return encoded["input_ids"][0].astype(np.int64), encoded["attention_mask"][0].astype(np.int64)


def unstorable_rows(hidden: Any) -> list[str | None]:
    """Per row of (B, 512, D) encoder output, why it cannot be stored as float16, or None.

    Checked before the cast: casting turns values beyond ±65504 into infinities, and a clamp
    would turn real infinities into ±65504 that look like valid features.
    """
    import torch

    finite = torch.isfinite(hidden).flatten(1).all(dim=1).tolist()
    peak = hidden.detach().float().abs().flatten(1).amax(dim=1).tolist()
    return [("non-finite T5 hidden states (inf or NaN in the encoder output)" if not ok
             else f"T5 hidden states beyond float16's range (|x| up to {top:.4g})" if top > FLOAT16_MAX
             else None) for ok, top in zip(finite, peak)]


def activation_bytes(hidden: int, d_ff: int, heads: int, element_bytes: int) -> int:
    """Rough peak activation memory of one 512-token caption in one layer, doubled for slack."""
    per_token = 10 * hidden + 2 * d_ff + 3 * heads * MAX_LENGTH  # states, FFN, attention scores
    return 2 * MAX_LENGTH * per_token * element_bytes


class T5Pass(Pass):
    """T5-large encoder: `t5_hidden` (512, 1024) float16 and `t5_mask` (512,) uint8 of caption.txt."""

    name = "t5"
    default = True
    version = "1"
    requires_modules = ("torch", "transformers", "tokenizers")
    uses_torch = True
    pip_extra = "gpu"
    reads = ("caption",)
    uses_image = False
    # Only the files the encoder needs: the whole repo also holds TF, Flax, Rust and ONNX copies (~15 GB).
    model = ModelSpec("google-t5/t5-large", files=("config.json", "model.safetensors", "tokenizer.json"),
                      aliases=("t5-large",))

    def __init__(self, options, config=None):
        super().__init__(options, config)
        self._model = None
        self._tokenizer = None
        self._precision: str | None = None

    def load(self) -> None:
        import torch

        from stratum_core.passes.torch_utils import auto_batch_size, bytes_per_element, torch_dtype

        self.check_requirements()
        location = self.resolve_weights()
        bf16_ok = self.options.is_cuda and torch.cuda.is_bf16_supported()
        self._precision = compute_precision(self.options.resolved_precision, self.options.is_cuda, bf16_ok)
        if self._precision != self.options.resolved_precision:
            log.warning("t5: fp16 overflows in T5; computing in %s and storing float16", self._precision)
        self._tokenizer, self._model = load_t5(location, torch_dtype(self._precision), self.options.device)
        config = self._model.config
        per_item = activation_bytes(config.d_model, config.d_ff, config.num_heads,
                                    bytes_per_element(self._precision))
        self.chosen_batch = auto_batch_size(self.options.device, per_item, requested=self.options.batch_size,
                                           cap=256)
        log.info("t5 from %s (%s), %s on %s, batch %d", location.root, location.source,
                 self._precision, self.options.device, self.chosen_batch)

    def preprocess(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        caption = item.inputs.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise ItemError("bad_input", "caption.txt is empty")
        return tokenize(self._tokenizer, caption.strip())

    def forward(self, batch: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """(B, 512, 1024) float16 hidden states (padding rows included), (B, 512) uint8 masks, and per
        caption why its hidden states cannot be stored (None when they can)."""
        import torch

        from stratum_core.passes.torch_utils import to_device

        ids = torch.from_numpy(np.stack([ids for ids, _ in batch]))
        mask = torch.from_numpy(np.stack([mask for _, mask in batch]))
        device = self.options.device
        hidden = self._model(input_ids=to_device(ids, device), attention_mask=to_device(mask, device)).last_hidden_state
        problems = unstorable_rows(hidden)  # on the raw values: the cast would hide or create infinities
        return hidden.to(torch.float16).cpu().numpy(), mask.numpy().astype(np.uint8), problems

    def postprocess(self, outputs: tuple[np.ndarray, np.ndarray, list[str | None]],
                    items: Sequence[Item]) -> list[Outcome]:
        hidden, mask, problems = outputs
        return [Outcome.ok(t5_hidden=hidden[i], t5_mask=mask[i]) if problems[i] is None
                else Outcome.failed("inference_error", problems[i]) for i in range(len(items))]

    def provenance(self) -> dict[str, Any]:
        record = super().provenance()
        if self._precision is not None:
            record["precision"] = self._precision  # never fp16, whatever was asked
        return record

    def close(self) -> None:
        self._model = None
        self._tokenizer = None


def load_t5(location: ModelLocation, dtype: Any, device: str) -> tuple[Any, Any]:
    """Tokenizer and encoder from a transformers folder (a full seq2seq checkpoint is fine: only the
    encoder is loaded); a folder that is not a T5 model is an InfrastructureError."""
    from transformers import AutoTokenizer, T5EncoderModel

    from stratum_core.passes.torch_utils import transformers_config

    root = location.root
    config = transformers_config("t5", root, "t5", "T5")
    if config.d_model != WIDTH:
        raise InfrastructureError(f"t5: {root} has d_model {config.d_model}; stratum's t5_hidden needs {WIDTH}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(root)
        model = T5EncoderModel.from_pretrained(root, dtype=dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InfrastructureError(f"t5: cannot load the tokenizer or weights from {root}: {exc}") from exc
    return tokenizer, model.to(device).eval()
