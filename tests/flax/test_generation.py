"""Flax twin generation: cached steps equal the uncached forward (one row too); prompts of one length
bucket compile once."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("lengths", [[4, 9], [9]], ids=["left-padded", "one-row"])
def test_cached_steps_equal_uncached_forward_flax(all_variants, lengths, left_padded_batch):
    import jax
    import jax.numpy as jnp

    from llama_flax.cache import KVCache
    from llama_flax.generation import decode_step, prefill
    from llama_shared.masks import positions_from_attention_mask

    _, _, model = all_variants
    ids, mask = (t.numpy() for t in left_padded_batch(lengths, seed=4))
    rows, steps = len(lengths), 12
    sequence = np.concatenate([ids, np.random.default_rng(5).integers(3, 128, (rows, steps))], 1)
    full_mask = np.concatenate([mask, np.ones((rows, steps), mask.dtype)], 1)
    positions = positions_from_attention_mask(full_mask, np)
    uncached = np.asarray(model(sequence, attention_mask=full_mask, position_ids=positions).logits)
    cache = KVCache.create(model.config, rows, 32)
    cache_mask = jnp.ones((rows, 32), jnp.int32).at[:, :9].set(mask)
    step_fn = jax.jit(decode_step, static_argnums=0, donate_argnums=6)
    logits, cache = jax.jit(prefill, static_argnums=0)(model.module, model.params, ids, cache_mask,
                                                       positions[:, :9], cache)
    for step in range(steps):
        np.testing.assert_allclose(np.asarray(logits), uncached[:, 8 + step], atol=1e-5, rtol=0)
        slot = 9 + step
        logits, cache = step_fn(model.module, model.params, sequence[:, slot:slot + 1], positions[:, slot:slot + 1],
                                jnp.array([slot]), cache_mask, cache)


def test_same_bucket_compiles_once(models, left_padded_batch):
    _, _, model = models
    for length in (3, 5, 11):
        ids, mask = left_padded_batch([length, 2], seed=length)
        stats = {}
        model.generate(ids.numpy(), mask.numpy(), max_new_tokens=7, eos_token_id=[], stats=stats)
        assert stats["new_tokens"] == 7
        if length > 3:
            assert stats["compile_s"] == 0.0
