"""Tiny configs of every supported family, shared by the stitchframe-transformers tests."""

from __future__ import annotations

VOCAB = 120


def tiny_config(model_type: str, width: int = 32, depth: int = 2, **extra) -> dict:
    """Fields of a tiny config of each family (hidden ``width``, ``depth`` layers)."""
    heads = {"num_attention_heads": 2}
    common = {"vocab_size": VOCAB, "max_position_embeddings": 64}
    if model_type in ("bert", "roberta"):
        cfg = {"hidden_size": width, "num_hidden_layers": depth, "intermediate_size": 2 * width, **heads, **common}
        if model_type == "roberta":
            cfg.update(pad_token_id=1, max_position_embeddings=66)
    elif model_type == "distilbert":
        cfg = {"dim": width, "n_layers": depth, "n_heads": 2, "hidden_dim": 2 * width, **common}
    elif model_type in ("vit", "deit"):
        cfg = {"hidden_size": width, "num_hidden_layers": depth, "intermediate_size": 2 * width, "image_size": 32,
               "patch_size": 8, **heads}
    elif model_type == "gpt2":
        cfg = {"n_embd": width, "n_layer": depth, "n_head": 2, "vocab_size": VOCAB, "n_positions": 64,
               "bos_token_id": VOCAB - 1, "eos_token_id": VOCAB - 1}
    else:  # llama
        cfg = {"hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": 4, "num_key_value_heads": 2,
               "intermediate_size": 2 * width, "pad_token_id": 0, **common}
    return {**cfg, **extra}
