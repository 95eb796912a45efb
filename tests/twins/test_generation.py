"""Greedy generation: Flax twin, torch twin and transformers give the same ids; cached steps equal
the uncached forward; eos, min_new_tokens, repetition_penalty and max_length as in transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llama_shared.generation import GenerationConfig

LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)
VARIANTS = {
    "mha-llama3": dict(num_key_value_heads=4, rope_scaling=LLAMA3_ROPE, rope_theta=500000.0),
    "gqa-llama3": dict(num_key_value_heads=2, rope_scaling=LLAMA3_ROPE, rope_theta=500000.0),
}


def left_padded_batch(lengths: list[int], vocab: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the given real lengths, left-padded with pad id 0, token ids from 3 up (past bos/eos)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, width - length:] = torch.randint(3, vocab, (length,), generator=generator)
        mask[row, width - length:] = 1
    return ids, mask


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny matmuls on a shared 2-core box run 20x faster without OpenMP's second thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def load_models(hf_checkpoint):
    """variant -> (transformers model, torch twin, Flax twin) on the same random weights, loaded once."""
    import transformers

    from llama_flax import FlaxLlamaForCausalLM
    from llama_torch import LlamaForCausalLM

    loaded = {}

    def load(variant: str):
        if variant not in loaded:
            folder = hf_checkpoint(**VARIANTS[variant])
            hf = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
            loaded[variant] = (hf, LlamaForCausalLM.from_pretrained(folder), FlaxLlamaForCausalLM.from_pretrained(folder))
        return loaded[variant]

    return load


@pytest.fixture(params=sorted(VARIANTS))
def all_variants(request, load_models):
    return load_models(request.param)


@pytest.fixture
def models(load_models):
    return load_models("gqa-llama3")


def generate_all(models, ids, mask, **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """transformers', the torch twin's and the Flax twin's greedy ids; eos_token_id=None means no eos
    (transformers' reading of an explicit None; the twins read None as "from the config" and [] as none)."""
    hf, torch_model, flax_model = models
    with torch.no_grad():
        reference = hf.generate(ids, attention_mask=mask, do_sample=False, **kwargs).numpy()
    if "eos_token_id" in kwargs and kwargs["eos_token_id"] is None:
        kwargs["eos_token_id"] = []
    ours_torch = torch_model.generate(ids, mask, do_sample=False, **kwargs).numpy()
    ours_flax = np.asarray(flax_model.generate(ids.numpy(), mask.numpy(), do_sample=False, **kwargs))
    return reference, ours_torch, ours_flax


@pytest.mark.parametrize("lengths", [[5, 12, 9], [7]], ids=["left-padded", "one-row"])
def test_greedy_128_tokens_identical_in_all_three(all_variants, lengths):
    """One row also: the Flax twin's one-row products on the CPU take llama_flax.matmul's row blocks."""
    ids, mask = left_padded_batch(lengths)
    reference, ours_torch, ours_flax = generate_all(all_variants, ids, mask, max_new_tokens=128, eos_token_id=None)
    assert reference.shape == (len(lengths), max(lengths) + 128)
    np.testing.assert_array_equal(ours_torch, reference)
    np.testing.assert_array_equal(ours_flax, reference)


def test_eos_list_stops_rows_and_fills_pad(models):
    ids, mask = left_padded_batch([4, 10])
    free_run, _, _ = generate_all(models, ids, mask, max_new_tokens=16, eos_token_id=None)
    # eos: a token row 0 produces at step 4 and one row 1 produces at step 9, so rows stop apart.
    eos = [int(free_run[0, 10 + 4]), int(free_run[1, 10 + 9])]
    reference, ours_torch, ours_flax = generate_all(models, ids, mask, max_new_tokens=16, eos_token_id=eos)
    assert reference.shape[1] < 10 + 16 or (reference[:, 10:] == 0).any()
    np.testing.assert_array_equal(ours_torch, reference)
    np.testing.assert_array_equal(ours_flax, reference)


def test_min_new_tokens_and_repetition_penalty_as_transformers(models):
    ids, mask = left_padded_batch([7, 3], seed=1)
    free_run, _, _ = generate_all(models, ids, mask, max_new_tokens=16, eos_token_id=None)
    eos = int(free_run[0, 7 + 2])
    reference, ours_torch, ours_flax = generate_all(models, ids, mask, max_new_tokens=16, eos_token_id=eos,
                                                    min_new_tokens=5, repetition_penalty=1.5)
    np.testing.assert_array_equal(ours_torch, reference)
    np.testing.assert_array_equal(ours_flax, reference)


def test_max_length_counts_the_prompt(models):
    ids, mask = left_padded_batch([6, 8], seed=2)
    reference, ours_torch, ours_flax = generate_all(models, ids, mask, max_length=13, eos_token_id=None)
    assert reference.shape == (2, 13)
    np.testing.assert_array_equal(ours_torch, reference)
    np.testing.assert_array_equal(ours_flax, reference)


def test_default_length_is_20_new_tokens(models):
    hf, torch_model, flax_model = models
    ids, mask = left_padded_batch([4], seed=3)
    assert torch_model.generate(ids, mask, eos_token_id=[]).shape == (1, 24)
    assert flax_model.generate(ids.numpy(), mask.numpy(), eos_token_id=[]).shape == (1, 24)


def test_cached_steps_equal_uncached_forward_torch(all_variants):
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


@pytest.mark.parametrize("lengths", [[4, 9], [9]], ids=["left-padded", "one-row"])
def test_cached_steps_equal_uncached_forward_flax(all_variants, lengths):
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


def test_compiled_decode_step_gives_the_eager_ids_and_follows_weight_changes(models):
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


def test_eager_decode_never_waits_for_the_device(models):
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


def test_same_bucket_compiles_once(models):
    _, _, model = models
    for length in (3, 5, 11):
        ids, mask = left_padded_batch([length, 2], seed=length)
        stats = {}
        model.generate(ids.numpy(), mask.numpy(), max_new_tokens=7, eos_token_id=[], stats=stats)
        assert stats["new_tokens"] == 7
        if length > 3:
            assert stats["compile_s"] == 0.0


def test_generation_config_file_is_read_and_written(models, tmp_path):
    import transformers

    hf, torch_model, flax_model = models
    instruct = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, eos_token_id=[2, 5], pad_token_id=0,
                                bos_token_id=1, max_new_tokens=9)
    hf.generation_config = transformers.GenerationConfig(**instruct.to_dict())
    try:
        hf.save_pretrained(tmp_path)
    finally:
        hf.generation_config = transformers.GenerationConfig.from_model_config(hf.config)
    loaded = type(torch_model).from_pretrained(tmp_path).generation_config
    assert loaded == instruct
    for model in (torch_model, flax_model):
        model.generation_config = instruct
        out = tmp_path / type(model).__name__
        model.save_pretrained(out)
        reread = transformers.GenerationConfig.from_pretrained(out)
        assert (reread.do_sample, reread.temperature, reread.top_p, reread.eos_token_id, reread.max_new_tokens) == \
            (True, 0.6, 0.9, [2, 5], 9)
        model.generation_config = None


def test_call_arguments_override_the_model_config(models):
    _, torch_model, flax_model = models
    ids, mask = left_padded_batch([5], seed=6)
    for model, ids_in in ((torch_model, ids), (flax_model, ids.numpy())):
        model.generation_config = GenerationConfig(max_new_tokens=3, eos_token_id=[], pad_token_id=0)
        try:
            assert model.generate(ids_in).shape == (1, 8)
            assert model.generate(ids_in, max_new_tokens=5).shape == (1, 10)
            assert model.generate(ids_in, generation_config=GenerationConfig(max_new_tokens=4,
                                                                             eos_token_id=[])).shape == (1, 9)
        finally:
            model.generation_config = None
