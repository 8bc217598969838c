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

# A tiny word list for the tokenizer: enough that captions split into several tokens.
_WORDS = ("a the of and with in on to is person man woman standing sitting wearing shirt jacket "
          "light dark background left right hand arm leg face hair red blue green white black "
          "photo camera angle from above below frame soft hard shadow").split()


def build_dinov3(folder: Path, *, layers: int = 1, intermediate_size: int = 1024, seed: int = 0) -> Path:
    """A DINOv3 ViT with hidden size 1024, 4 registers and patch 16; returns `folder`."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(hidden_size=HIDDEN_SIZE, intermediate_size=intermediate_size,
                             num_hidden_layers=layers, num_attention_heads=16, patch_size=DINOV3_PATCH,
                             num_register_tokens=DINOV3_REGISTERS, layerscale_value=1.0)
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


def build_t5(folder: Path, *, layers: int = 1, d_ff: int = 1024, seed: int = 0,
             with_tokenizer_config: bool = True) -> Path:
    """A T5 encoder with d_model 1024 plus its tokenizer; returns `folder`.

    `with_tokenizer_config=False` leaves out tokenizer_config.json, like the real
    google-t5/t5-large repo (the tokenizer class then comes from config.json).
    """
    import torch
    from transformers import T5Config, T5EncoderModel

    tokenizer = t5_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=HIDDEN_SIZE, d_kv=64, d_ff=d_ff, num_layers=layers,
                      num_heads=16, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0)
    torch.manual_seed(seed)
    model = T5EncoderModel(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if not with_tokenizer_config:
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
    return folder
