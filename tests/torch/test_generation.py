"""Torch twin generation: cached steps equal the uncached forward; generate(compile=True) gives the
eager ids; the eager loop never reads back from the device; timings wait for the device."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cached_steps_equal_uncached_forward_torch(all_variants, left_padded_batch):
    from llama_shared.masks import positions_from_attention_mask
    from llama_torch.cache import KVCache
    from llama_torch.generation import decode_step, prefill

    _, model, _ = all_variants
    ids, mask = left_padded_batch([4, 9], seed=4)
    steps = 12
    sequence = torch.cat([ids, torch.randint(3, 128, (2, steps), generator=torch.Generator().manual_seed(5))], 1)
    full_mask = torch.cat([mask, torch.ones(2, steps, dtype=mask.dtype)], 1)
    positions = positions_from_attention_mask(full_mask, torch)
    with torch.no_grad():
        uncached = model(sequence, attention_mask=full_mask, position_ids=positions).logits.float()
        cache = KVCache(model.config, 2, 32)
        cache_mask = torch.ones(2, 32, dtype=mask.dtype)
        cache_mask[:, :9] = mask
        logits = prefill(model, ids, cache_mask, positions[:, :9], cache)
        for step in range(steps):
            torch.testing.assert_close(logits, uncached[:, 8 + step], atol=1e-5, rtol=0)
            slot = 9 + step
            logits = decode_step(model, sequence[:, slot:slot + 1], positions[:, slot:slot + 1],
                                 torch.tensor([slot]), cache_mask, cache)


def test_compiled_decode_step_gives_the_eager_ids_and_follows_weight_changes(models, left_padded_batch):
    """generate(compile=True) captures the decode step with torch.compile (fullgraph: a graph break
    fails) over a reused static cache, on the CPU with frozen weights: it must reproduce the eager
    ids, left padding included, and compile again when a weight changes rather than use stale ones."""
    _, torch_model, _ = models
    ids, mask = left_padded_batch([4, 9])
    eager = torch_model.generate(ids, mask, max_new_tokens=12, eos_token_id=[], compile=False)
    steps = set()
    for _ in range(2):  # the second call reuses the compiled step and its cache
        compiled = torch_model.generate(ids, mask, max_new_tokens=12, eos_token_id=[], compile=True)
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
        steps.add(id(torch_model._decode_step_fn(True)))
    assert len(steps) == 1
    head = torch_model.lm_head.weight
    original = head.detach().clone()
    try:
        with torch.no_grad():
            head[:, :] = torch.roll(original, 1, dims=0)  # every logit moves to the next token id
        changed = torch_model.generate(ids, mask, max_new_tokens=12, eos_token_id=[], compile=False)
        assert not torch.equal(changed, eager)
        torch.testing.assert_close(torch_model.generate(ids, mask, max_new_tokens=12, eos_token_id=[], compile=True),
                                   changed, rtol=0, atol=0)
    finally:
        with torch.no_grad():
            head.copy_(original)


def test_eager_decode_never_waits_for_the_device(models, left_padded_batch):
    """Without eos ids, generate's eager loop copies nothing back to the host per step, so a GPU is
    never stalled by the Python loop; the forward's own token-id check (a min/max read back) stays
    on for plain forward calls."""
    from torch.profiler import ProfilerActivity, profile

    _, torch_model, _ = models
    ids, mask = left_padded_batch([4, 9])

    def host_reads(run) -> int:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        return sum(event.name in ("aten::item", "aten::_local_scalar_dense") for event in prof.events())

    assert host_reads(lambda: torch_model.generate(ids, mask, max_new_tokens=6, eos_token_id=[])) == 0
    assert host_reads(lambda: torch_model(ids, attention_mask=mask)) > 0
    with pytest.raises(ValueError, match="token id 500"):
        torch_model(torch.tensor([[1, 500]]))


def test_torch_timings_wait_for_the_device(models, monkeypatch):
    """CUDA runs behind Python: the first-token and decode times of generate(stats=...) are taken
    after waiting for the device, or they would count only the queuing of the work."""
    import llama_torch.generation as generation

    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    generation.seconds_since(0.0, torch.device("cuda", 0))
    assert synced == [torch.device("cuda", 0)]
    waits, measure = [], generation.seconds_since
    monkeypatch.setattr(generation, "seconds_since", lambda start, device: waits.append(device) or measure(start, device))
    _, torch_model, _ = models
    stats = {}
    torch_model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, eos_token_id=[], stats=stats)
    assert waits == [torch_model.device] * 2
    assert stats["new_tokens"] == 4 and 0 <= stats["time_to_first_token_s"] and 0 <= stats["decode_s"]
