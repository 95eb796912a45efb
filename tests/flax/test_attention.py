"""Flax attention: grouped_attention equals jax.nn.dot_product_attention (values and gradients) for
every mask form the model passes, and a compiled decoding loop reads the KV cache without copying it."""

from __future__ import annotations

import re

import numpy as np
import pytest

TOLERANCE = 1e-5


def attention_inputs(heads: int, kv_heads: int, seq: int, keys: int, dtype: str = "float32"):
    import jax.numpy as jnp

    rng = np.random.default_rng(heads * 10 + kv_heads)
    q = jnp.asarray(rng.standard_normal((2, seq, heads, 16)), dtype)
    k, v = (jnp.asarray(rng.standard_normal((2, keys, kv_heads, 16)), dtype) for _ in range(2))
    return q, k, v


def masks(seq: int, keys: int, heads: int) -> dict:
    """None (causal), left padding with a fully masked query row, and a per-head 4-D mask."""
    import jax.numpy as jnp

    causal = np.tril(np.ones((seq, keys), bool), keys - seq)
    padded = np.broadcast_to(causal, (2, 1, seq, keys)).copy()
    padded[1, :, :, :3] = False
    padded[1, :, 0, :] = False
    per_head = np.random.default_rng(1).random((2, heads, seq, keys)) < 0.7
    per_head[..., 0] = True
    return {"causal": None, "padded": jnp.asarray(padded), "per-head": jnp.asarray(per_head)}


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 2)], ids=["mha", "gqa-2", "gqa-4"])
@pytest.mark.parametrize("mask_name", ["causal", "padded", "per-head"])
def test_grouped_attention_equals_jax_dot_product_attention(heads, kv_heads, mask_name):
    import jax
    import jax.numpy as jnp

    from llama_flax.modeling import dot_product_attention, kv_rows
    from llama_shared.masks import query_has_keys

    seq = keys = 7
    q, k, v = attention_inputs(heads, kv_heads, seq, keys)
    allowed = masks(seq, keys, heads)[mask_name]

    def ours(q, k, v):
        return dot_product_attention(q, kv_rows(k), kv_rows(v), allowed)

    def reference(q, k, v):
        out = jax.nn.dot_product_attention(q, k, v, mask=allowed, is_causal=allowed is None, implementation="xla")
        return out if allowed is None else jnp.where(query_has_keys(allowed), out, 0.0)

    assert float(jnp.max(jnp.abs(ours(q, k, v) - reference(q, k, v)))) <= TOLERANCE
    grads = jax.grad(lambda *a: jnp.sum(ours(*a) ** 2), argnums=(0, 1, 2))(q, k, v)
    expected = jax.grad(lambda *a: jnp.sum(reference(*a) ** 2), argnums=(0, 1, 2))(q, k, v)
    assert max(float(jnp.max(jnp.abs(g - e))) for g, e in zip(grads, expected)) <= 1e-4


def test_grouped_attention_over_a_longer_cache_in_bfloat16():
    """One decoding query over a cache of 11 slots, the last 4 not yet written: bf16 inputs give
    jax's bf16 result (float32 logits and softmax inside both)."""
    import jax
    import jax.numpy as jnp

    from llama_flax.modeling import grouped_attention, kv_rows

    q, k, v = attention_inputs(8, 2, 1, 11, "bfloat16")
    allowed = jnp.asarray(np.arange(11) < 7)[None, None, None].repeat(2, 0)
    out = grouped_attention(q, kv_rows(k), kv_rows(v), allowed)
    expected = jax.nn.dot_product_attention(q, k, v, mask=allowed, implementation="xla")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(expected, np.float32), atol=2e-2, rtol=0)


def test_decoding_loop_does_not_copy_the_kv_cache(models, left_padded_batch):
    """XLA:CPU's compiled generate loop writes each step's slots in place and feeds the cache to the
    attention dots as it lies: no copy (plain or fused) of any array a layer's cache's size. A cache
    laid out (batch, slots, kv_heads, head_dim) was transposed for the dots, and one laid out
    (batch, kv_heads, slots, head_dim) updated twice and copied, at every layer of every step."""
    _, _, model = models
    ids, mask = left_padded_batch([5, 3], seed=2)
    model.generate(ids.numpy(), mask.numpy(), max_new_tokens=4, eos_token_id=[])
    ((signature, compiled),) = model.__dict__["_compiled_generation"].items()
    config, settings = model.config, signature[1]
    cache_elements = 2 * config.num_key_value_heads * config.head_dim * settings.cache_length
    copies = [line.strip()[:160] for line in while_body(compiled.as_text()) if is_copy_of(line, cache_elements)]
    assert not copies, copies


def while_body(hlo: str) -> list[str]:
    """The instructions of the (one) while loop's body computation in an HLO module's text."""
    (body,) = re.findall(r"\bwhile\(.*?body=%([\w.\-]+)", hlo)
    lines = hlo.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"%{re.escape(body)} \(", line))
    end = next(i for i in range(start, len(lines)) if lines[i] == "}")
    return lines[start + 1:end]


def is_copy_of(line: str, elements: int) -> bool:
    """An HLO instruction that copies or transposes (or a fusion named for either) that many elements."""
    match = re.match(r"\s*(?:ROOT )?%(\S+) = \w+\[([\d,]*)\]\S* (\w+)\(", line)
    if not match or not re.search(r"copy|transpose", f"{match[1]} {match[3]}"):
        return False
    return int(np.prod([int(d) for d in match[2].split(",") if d])) == elements
