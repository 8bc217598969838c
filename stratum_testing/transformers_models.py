"""Builders of smoke-test transformers folders (random weights, real formats and widths, one layer).

`build_dinov3(folder)` and `build_t5(folder)` write folders that load exactly like the real
`facebook/dinov3-vitl16-pretrain-lvd1689m` and `google-t5/t5-large` ones, offline, in seconds.
"""

from __future__ import annotations

import string
from pathlib import Path

HIDDEN_SIZE = 1024  # the real output width of both models
DINOV3_REGISTERS = 4
DINOV3_PATCH = 16
DINOV3_LAYERSCALE = 1e-5  # facebook/dinov3-vitl16-pretrain-lvd1689m's; the smoke default 1.0 keeps outputs far from 0
T5_LARGE_VOCAB = 32128  # google-t5/t5-large's embedding rows (the smoke tokenizer has far fewer words)

# A tiny word list for the tokenizer: enough that captions split into several tokens.
_WORDS = ("a the of and with in on to is person man woman standing sitting wearing shirt jacket "
          "light dark background left right hand arm leg face hair red blue green white black "
          "photo camera angle from above below frame soft hard shadow").split()


def build_dinov3(folder: Path, *, layers: int = 1, intermediate_size: int = 1024, layerscale_value: float = 1.0,
                 seed: int = 0) -> Path:
    """A DINOv3 ViT with the real ViT-L/16 config's values (hidden size 1024, 16 heads, 4 registers, patch 16,
    RoPE, biases), `layers` deep; returns `folder`. The benches build the full model with 24 layers, 4096
    and DINOV3_LAYERSCALE."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    # Values pinned, not left to defaults: the GPU host runs another transformers release.
    config = DINOv3ViTConfig(hidden_size=HIDDEN_SIZE, intermediate_size=intermediate_size,
                             num_hidden_layers=layers, num_attention_heads=16, patch_size=DINOV3_PATCH,
                             num_register_tokens=DINOV3_REGISTERS, layerscale_value=layerscale_value,
                             rope_theta=100.0, image_size=224, query_bias=True, key_bias=False, value_bias=True,
                             proj_bias=True, mlp_bias=True, use_gated_mlp=False, hidden_act="gelu",
                             layer_norm_eps=1e-5, pos_embed_rescale=2.0)
    torch.manual_seed(seed)
    model = DINOv3ViTModel(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder


def t5_tokenizer():
    """A T5 tokenizer (Unigram, `<pad>`=0, `</s>`=1, `<unk>`=2) over a small built-in vocabulary."""
    from transformers import T5Tokenizer

    pieces = [("▁" + w, -float(i % 7) - 3.0) for i, w in enumerate(_WORDS)]
    pieces += [(c, -12.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("▁" + c, -11.0) for c in string.ascii_lowercase]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0), *pieces]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return T5Tokenizer(vocab=vocab, extra_ids=100, model_max_length=512)


def build_t5(folder: Path, *, layers: int = 1, d_ff: int = 1024, vocab_size: int | None = None, seed: int = 0,
             with_tokenizer_config: bool = True) -> Path:
    """A T5 encoder with d_model 1024 plus its tokenizer; returns `folder`. The benches build the T5-large
    encoder with 24 layers, d_ff 4096 and T5_LARGE_VOCAB rows (default: the smoke tokenizer's size).

    `with_tokenizer_config=False` leaves out tokenizer_config.json, like the real
    google-t5/t5-large repo (the tokenizer class then comes from config.json).
    """
    import torch
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer()
    config = T5Config(vocab_size=vocab_size or len(tokenizer), d_model=HIDDEN_SIZE, d_kv=64, d_ff=d_ff,
                      num_layers=layers, num_heads=16, relative_attention_num_buckets=32, feed_forward_proj="relu",
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(seed)
    model = T5EncoderModel(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if not with_tokenizer_config:
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
    return folder
