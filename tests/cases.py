"""Case tables that parametrize tests in more than one folder (a fixture cannot feed
@pytest.mark.parametrize or @given): import them as `from tests.cases import ...`."""

from __future__ import annotations

from llama_shared import quantization as q

# ------------------------------------------------------------------------------------------------
# Tiny-model configs (overrides of conftest's TINY): core/test_config_rope, twins/test_models_parity

ROPE_CASES = {
    "linear": dict(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "dynamic": dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=256),
    "yarn": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}),
    "longrope": dict(rope_scaling={"rope_type": "longrope", "short_factor": [1.0 + i / 8 for i in range(8)],
                                   "long_factor": [2.0 + i / 2 for i in range(8)]},
                     max_position_embeddings=1024, original_max_position_embeddings=256),
    # The pre-training length inside rope_scaling, where transformers 5 writes it: 4.57 ignored it.
    "longrope_inner": dict(rope_scaling={"rope_type": "longrope", "short_factor": [1.0 + i / 8 for i in range(8)],
                                         "long_factor": [2.0 + i / 2 for i in range(8)], "factor": 4.0,
                                         "original_max_position_embeddings": 256},
                           max_position_embeddings=1024),
    "llama3": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
                   rope_theta=500000.0),
}

# Cases where transformers 4.57.6 has a known bug that 5.x fixed (docs/numerics.md): compared with
# transformers 5 only.
LEGACY_BUGS = {"rope_longrope_inner": "4.57 ignores rope_scaling's original_max_position_embeddings for longrope"}

# Every config feature of the parity matrix (tiny default: GQA 4 heads / 2 kv heads, 2 layers).
MODEL_CASES = {
    "mha": dict(num_key_value_heads=4),
    "gqa": dict(),
    "mqa": dict(num_key_value_heads=1),
    "head_dim": dict(head_dim=32),
    "attention_bias": dict(attention_bias=True),
    "mlp_bias": dict(mlp_bias=True),
    "tied": dict(tie_word_embeddings=True),
    "gelu": dict(hidden_act="gelu"),
    **{f"rope_{name}": case for name, case in ROPE_CASES.items()},
}

# ------------------------------------------------------------------------------------------------
# Tokenizer inputs: tokenizers/test_spm, tokenizers/test_llama3

# Pieces that stress tokenizers: whitespace runs, CJK, emoji, combining marks, controls and
# strings that look like (or are) special tokens of either tokenizer family.
TRICKY_PIECES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\u3000", "\u00a0", "\u2581", "\u2581\u2581",
                 "<s>", "</s>", "<unk>", "<s", "s>", "</", "<<s>>", "<|begin_of_text|>", "<|eot_id|>",
                 "<|end_of_text|", "<|reserved_special_token_7|>", "<|python_tag|>", "生活的真谛是", "日本", "🙂",
                 "👍🏽", "👨‍👩‍👧", "e\u0301", "\u0301", "\x00", "\x07", "\x7f", "\u200b", "\ufeff", "Hello",
                 " world", "'s", "'LL", "don't", "123456", "3.14", ".", " .", "?!", "naïve", "Ελλ"]


def tricky_text():
    """Hypothesis strategy: arbitrary unicode mixed with TRICKY_PIECES (empty strings included)."""
    from hypothesis import strategies as st

    piece = st.one_of(st.text(max_size=6), st.sampled_from(TRICKY_PIECES))
    return st.lists(piece, max_size=10).map("".join)


# ------------------------------------------------------------------------------------------------
# Weight-only quantization settings: core/, torch/ and twins/test_quantization

QUANTIZATION_SETTINGS = {"int8": q.QuantizationConfig(8), "int8-zp": q.QuantizationConfig(8, symmetric=False),
                         "int4-g32": q.QuantizationConfig(4, 32), "int4-g128": q.QuantizationConfig(4, 128),
                         "int4-g64-zp": q.QuantizationConfig(4, 64, symmetric=False),
                         "int8-g32": q.QuantizationConfig(8, 32),
                         "int4-g16": q.QuantizationConfig(4, 16),
                         "int4-g32-fzp": q.QuantizationConfig(4, 32, symmetric=False, zero_point_domain="float")}
