"""Weight-only int8 / int4 quantization (issue 7) in the twins: twin parity, error against float, bytes,
errors. The format and its numpy reference: tests/core; the torch twin under torch.compile: tests/torch."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from llama_flax import native as flax_native
from llama_flax import quantization as flax_quant
from llama_flax.modeling import FlaxLlamaForCausalLM
from llama_shared import native as shared_native
from llama_shared import quantization as q
from llama_shared.checkpoints import Checkpoint, save_tensors
from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError, ConfigError
from llama_shared.naming import flatten_tree, hf_key
from llama_torch import native as torch_native
from llama_torch import quantization as torch_quant
from llama_torch.tensors import to_numpy
from llama_torch.modeling import LlamaForCausalLM
from tests.cases import QUANTIZATION_SETTINGS as SETTINGS

# ------------------------------------------------------------------------------------------------
# A small random Llama whose weights look like a trained model's, for the quantization-error tests.
#
# Initialisation-style weights (Gaussian, std 0.02) are the easy case for quantization and give
# near-uniform next-token distributions, so a KL measured on them says little. Here every linear
# weight has heavy tails (Student-t, 5 degrees of freedom: excess kurtosis 6) and a few loud input
# channels (per-column scales drawn log-normally, sigma 0.5), the two features that make real Llama
# weights hard to quantize. Weights are scaled by 1/sqrt(fan_in) so activations stay O(1), the
# layers' output projections by a further 1/sqrt(2 * layers) so each layer nudges the residual
# stream rather than replacing it (as in trained models, and GPT-2's initialisation), and the head so
# the float model's next-token distributions are peaked (entropy well below log(vocab)). Hidden and
# intermediate sizes are multiples of 128 so every int4 group size applies, and the embedding is
# about 2% of the weights, as in Llama-2-7B.

REALISTIC = dict(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def heavy_tailed(rng: np.random.Generator, out_features: int, in_features: int, gain: float = 1.0) -> np.ndarray:
    """Student-t(5) entries with log-normal per-input-column scales, std about gain / sqrt(in_features)."""
    t = rng.standard_t(5, size=(out_features, in_features)) / np.sqrt(5 / 3)
    columns = rng.lognormal(0.0, 0.5, size=in_features)
    columns /= np.sqrt(np.mean(columns**2))
    return (t * columns * gain / np.sqrt(in_features)).astype(np.float32)


def save_realistic_model(directory: str, seed: int = 0) -> str:
    """Write config.json and model.safetensors of the model described above; return the folder."""
    config = LlamaConfig(**REALISTIC)
    rng = np.random.default_rng(seed)
    h, inter, d = config.hidden_size, config.intermediate_size, config.head_dim
    tensors = {"model.embed_tokens.weight": rng.standard_normal((config.vocab_size, h)).astype(np.float32)}
    shapes = {"self_attn.q_proj": (config.num_attention_heads * d, h),
              "self_attn.k_proj": (config.num_key_value_heads * d, h),
              "self_attn.v_proj": (config.num_key_value_heads * d, h),
              "self_attn.o_proj": (h, config.num_attention_heads * d),
              "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h), "mlp.down_proj": (h, inter)}
    residual_gain = 1 / np.sqrt(2 * config.num_hidden_layers)
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        for module, (out_features, in_features) in shapes.items():
            gain = residual_gain if module in ("self_attn.o_proj", "mlp.down_proj") else 1.0
            tensors[f"{prefix}{module}.weight"] = heavy_tailed(rng, out_features, in_features, gain)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"{prefix}{norm}.weight"] = (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)
    tensors["model.norm.weight"] = np.ones(h, np.float32)
    tensors["lm_head.weight"] = heavy_tailed(rng, config.vocab_size, h, gain=4.0)
    config.save_pretrained(directory)
    save_tensors(directory, tensors)
    return directory


def mean_kl_per_token(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over tokens of KL(reference || other) between the next-token distributions, in nats."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    log_p, log_q = log_softmax(reference_logits), log_softmax(logits)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    return save_realistic_model(str(tmp_path_factory.mktemp("realistic")))


@pytest.fixture(scope="module")
def token_ids():
    return np.random.default_rng(0).integers(3, REALISTIC["vocab_size"], (4, 64))


@pytest.fixture(scope="module")
def float_logits(realistic, token_ids):
    with torch.no_grad():
        return LlamaForCausalLM.from_pretrained(realistic)(torch.from_numpy(token_ids)).logits.numpy()


def torch_logits(model, token_ids):
    with torch.no_grad():
        return model(torch.from_numpy(token_ids)).logits.numpy()


# ------------------------------------------------------------------------------------------------
# Both twins


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_twins_hold_the_same_integers_and_agree_on_logits(name, realistic, token_ids):
    settings = SETTINGS[name]
    torch_model = LlamaForCausalLM.from_pretrained(realistic, quantization=settings)
    flax_model = FlaxLlamaForCausalLM.from_pretrained(realistic, quantization=settings)
    state = torch_model.state_dict()
    flat = {hf_key(path)[0]: np.asarray(v) for path, v in flatten_tree(flax_model.params).items()}
    quantized = [k for k in state if k.endswith(".qweight")]
    assert len(quantized) == 7 * REALISTIC["num_hidden_layers"] + 1
    for key in quantized + [k.replace("qweight", "scales") for k in quantized]:
        np.testing.assert_array_equal(to_numpy(state[key]), flat[key], err_msg=key)
    flax_logits = np.asarray(flax_model(jnp.asarray(token_ids)).logits)
    np.testing.assert_allclose(torch_logits(torch_model, token_ids), flax_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["int8", "int4-g32", "int4-g64-zp"])
def test_quantized_layers_compute_x_times_the_reference_dequantized_weight(name):
    settings = SETTINGS[name]
    rng = np.random.default_rng(3)
    weight, x = rng.standard_normal((96, 128)).astype(np.float32), rng.standard_normal((2, 5, 128)).astype(np.float32)
    tensors = q.quantize(weight, settings)
    expected = x.astype(np.float64) @ q.dequantize(tensors, settings).astype(np.float64).T
    layer = torch_quant.QuantizedLinear(128, 96, False, settings)
    for leaf, array in tensors.items():
        getattr(layer, leaf).copy_(torch.from_numpy(array))
    with torch.no_grad():
        np.testing.assert_allclose(layer(torch.from_numpy(x)).numpy(), expected, atol=2e-5, rtol=0)
    flax_out = flax_quant.QuantizedDense(96, settings).apply({"params": tensors}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(flax_out), expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_quantize_on_a_loaded_model_equals_quantizing_while_loading(backend, realistic, token_ids):
    cls = LlamaForCausalLM if backend == "torch" else FlaxLlamaForCausalLM
    module = torch_quant if backend == "torch" else flax_quant
    loaded = module.quantize(cls.from_pretrained(realistic), "int4", group_size=64)
    streamed = cls.from_pretrained(realistic, quantization="int4", group_size=64)
    assert loaded.config == streamed.config
    if backend == "torch":
        np.testing.assert_array_equal(torch_logits(loaded, token_ids), torch_logits(streamed, token_ids))
    else:
        ids = jnp.asarray(token_ids)
        np.testing.assert_array_equal(np.asarray(loaded(ids).logits), np.asarray(streamed(ids).logits))
    with pytest.raises(ConfigError, match="already quantized"):
        module.quantize(loaded, "int8")


def test_quantized_checkpoints_round_trip_bit_exactly_across_twins(realistic, token_ids, tmp_path):
    torch_model = LlamaForCausalLM.from_pretrained(realistic, quantization="int4", group_size=32)
    torch_model.save_pretrained(tmp_path / "from_torch")
    flax_model = FlaxLlamaForCausalLM.from_pretrained(tmp_path / "from_torch")
    flax_model.save_pretrained(tmp_path / "from_flax")
    with open(tmp_path / "from_flax" / "config.json") as f:
        assert json.load(f)["quantization_config"] == SETTINGS["int4-g32"].to_dict()
    assert Checkpoint(tmp_path / "from_flax").metadata[q.METADATA_KEY]
    again = LlamaForCausalLM.from_pretrained(tmp_path / "from_flax")
    for key, tensor in torch_model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[key]), key
    np.testing.assert_allclose(np.asarray(flax_model(jnp.asarray(token_ids)).logits),
                               torch_logits(again, token_ids), atol=1e-4, rtol=0)


def test_cached_greedy_decoding_is_the_same_in_both_twins(realistic, token_ids):
    torch_model = LlamaForCausalLM.from_pretrained(realistic, quantization="int4")
    flax_model = FlaxLlamaForCausalLM.from_pretrained(realistic, quantization="int4")
    prompt = token_ids[:1, :8]
    torch_ids = torch_model.generate(torch.from_numpy(prompt), max_new_tokens=16, do_sample=False).numpy()
    flax_ids = np.asarray(flax_model.generate(jnp.asarray(prompt), max_new_tokens=16, do_sample=False))
    np.testing.assert_array_equal(torch_ids, flax_ids)


# ------------------------------------------------------------------------------------------------
# Error against the float model, and bytes


def test_mean_kl_per_token_against_float_is_bounded(realistic, token_ids, float_logits):
    """Bounds from measurement on this model (save_realistic_model: heavy-tailed weights, loud input channels).

    Measured mean KL(float || quantized) per token over 256 tokens, seeds 0-3 of the model, on
    2026-11-27: int8 0.0025-0.0032 nats, int4-g32 0.20-0.23, int4-g128 0.44-0.50 (float entropy
    1.75-1.90 nats). This model is deliberately hard: the relative weight error of int4-g128 is
    19.5% here against 11% for Gaussian weights, and a random network has none of a trained one's
    redundancy, so the int4 figures are far above what trained Llamas show. The bounds are about
    twice the largest int8 and 1.5 times the largest int4-g128 value measured; a broken format
    (a swapped nibble order, scales applied to the wrong group) scores several nats.
    """
    kl = {}
    for name in ("int8", "int4-g32", "int4-g128"):
        model = LlamaForCausalLM.from_pretrained(realistic, quantization=SETTINGS[name])
        kl[name] = mean_kl_per_token(float_logits, torch_logits(model, token_ids))
    print(f"mean KL per token vs float: {kl}")
    assert kl["int8"] < 0.006
    assert kl["int4-g128"] < 0.75
    assert kl["int8"] < kl["int4-g32"] < kl["int4-g128"]


def test_demo_model_kl_per_token_is_bounded():
    """The table of benchmarks/quant_kl.py (the trained demo model, torch twin), bounded from its
    measurement on 2026-12-02 (147 tokens, float entropy 4.16 nats): int8 1e-5 nats; int4 symmetric
    9.7e-4 (g16) to 1.23e-3 (g128); float zero points 6.1e-4 to 8.9e-4. Bounds at about twice the
    measured values; a broken format (wrong nibble order, scales on the wrong group) scores whole nats."""
    from benchmarks.quant_kl import kl_table

    table, entropy, _ = kl_table()
    print(f"demo model KL per token vs float: {table}")
    assert entropy > 3
    assert table["int8"] < 5e-5
    int4 = {label: kl for label, kl in table.items() if label.startswith("int4")}
    assert all(1e-4 < kl < 2.5e-3 for kl in int4.values()), int4
    assert table["int4-g32-fzp (no down_proj)"] < table["int4-g32 (no down_proj)"]
    assert table["int4-g16"] < table["int4-g128 (no down_proj)"]


def torch_parameter_bytes(model) -> int:
    tensors = {t.data_ptr(): t for t in model.state_dict().values()}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def test_parameter_bytes_against_bfloat16(realistic):
    """Whole-model bytes (embedding and norms stay bfloat16), held against the issue's ceilings."""
    float_bytes = torch_parameter_bytes(LlamaForCausalLM.from_pretrained(realistic, dtype=torch.bfloat16))
    ratios = {}
    for name in ("int8", "int4-g128"):
        torch_model = LlamaForCausalLM.from_pretrained(realistic, dtype=torch.bfloat16, quantization=SETTINGS[name])
        flax_model = FlaxLlamaForCausalLM.from_pretrained(realistic, dtype=jnp.bfloat16, quantization=SETTINGS[name])
        flax_bytes = sum(leaf.nbytes for leaf in flatten_tree(flax_model.params).values())
        assert flax_bytes == torch_parameter_bytes(torch_model)
        ratios[name] = flax_bytes / float_bytes
    print(f"parameter bytes / bfloat16: {ratios}")
    assert ratios["int8"] <= 0.55
    assert ratios["int4-g128"] <= 0.30


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("cls", [LlamaForCausalLM, FlaxLlamaForCausalLM])
def test_a_group_size_that_does_not_divide_the_input_dimension_is_refused(cls, hf_checkpoint):
    with pytest.raises(ConfigError, match="group_size 128 does not divide the input width 64 of q_proj; group sizes that divide it: 16, 32, 64"):
        cls.from_pretrained(hf_checkpoint(), quantization="int4", group_size=128)


@pytest.fixture(scope="module")
def int4_checkpoint(realistic, tmp_path_factory):
    folder = tmp_path_factory.mktemp("int4_g128")
    LlamaForCausalLM.from_pretrained(realistic, quantization="int4").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("cls", [LlamaForCausalLM, FlaxLlamaForCausalLM])
@pytest.mark.parametrize("request_", [dict(quantization="int8"), dict(quantization="int4", group_size=64)])
def test_a_quantized_checkpoint_loaded_with_other_settings_is_refused(cls, request_, int4_checkpoint):
    with pytest.raises(CheckpointError, match="holds int4-g128 .* cannot load as int"):
        cls.from_pretrained(int4_checkpoint, **request_)
    assert cls.from_pretrained(int4_checkpoint, quantization="int4", group_size=128).config == \
        cls.from_pretrained(int4_checkpoint).config


def test_a_config_that_disagrees_with_the_checkpoint_metadata_is_refused(int4_checkpoint, tmp_path):
    for name in os.listdir(int4_checkpoint):
        (tmp_path / name).write_bytes((int4_checkpoint / name).read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    del config["quantization_config"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json.* says float weights but the safetensors metadata says int4"):
        LlamaForCausalLM.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------
# Kernels


def rounded_to_int16(x: np.ndarray) -> np.ndarray:
    """x as the kernel's one-row product sees it: each block of 32 columns rounded to int16 steps of
    max |x| / 32767, in float32 as quantized_matmul.h computes them."""
    blocks = np.split(x, range(32, x.shape[-1], 32), axis=-1)
    out = []
    for block in blocks:
        largest = np.abs(block).max(axis=-1, keepdims=True)
        levels = np.float32(32767)
        out.append(np.rint(block * (levels / largest)) * (largest / levels).astype(np.float64))
    return np.concatenate(out, axis=-1)


def weight_parts(tensors: dict, settings: q.QuantizationConfig) -> tuple[np.ndarray, np.ndarray]:
    """(scale * stored code, the value of stored code 0) in float64, whose sum is the weight (int4
    stores code + 8): the kernel multiplies the first by x's int16 rounding and the second by x."""
    offsets = q.dequantize({**tensors, "qweight": np.zeros_like(tensors["qweight"])}, settings).astype(np.float64)
    return q.dequantize(tensors, settings).astype(np.float64) - offsets, offsets


def kernel_reference(x: np.ndarray, tensors: dict, settings: q.QuantizationConfig) -> np.ndarray:
    """The native kernel's product in float64: several input rows meet both weight_parts as they are,
    one input row meets the codes' part rounded to int16 (rounded_to_int16) and the rest as it is."""
    codes, offsets = weight_parts(tensors, settings)
    rounded = rounded_to_int16(x) if x.shape[-2] == 1 else x
    return rounded @ codes.T + x.astype(np.float64) @ offsets.T


KERNEL_SETTINGS = {**{name: SETTINGS[name] for name in ("int8", "int4-g32", "int4-g64-zp", "int4-g32-fzp",
                                                          "int8-g32", "int4-g16")},
                   "int8-g16-zp": q.QuantizationConfig(8, 16, symmetric=False)}


@pytest.mark.parametrize("rows, odd", [(1, False), (1, True), (5, True), (21, True)])
@pytest.mark.parametrize("name", sorted(KERNEL_SETTINGS))
def test_cpu_kernels_compute_their_documented_product(name, rows, odd):
    """Both twins' native kernel equals kernel_reference, and stays within the int16 rounding's bound of
    the portable product: widths of 4 int4 steps of 64 columns, and odd ones (288: 4 steps and 32
    columns; 320: 5 steps); groups of 16, 32, 64 and whole rows (a row's group offsets summed
    in vectorised eights and a rest); one input row; 5 rows (dot products, rows in pairs plus a rest)
    and 21 (x transposed: a tile of 16 rows, then one of 8 padded); 63 output rows (weight rows in
    twelves, then 3)."""
    settings = KERNEL_SETTINGS[name]
    width = 256 if not odd else 288 if 288 % (settings.group_size or 32) == 0 else 320
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((63, width)).astype(np.float32)
    x = rng.standard_normal((1, rows, width)).astype(np.float32) * rng.uniform(0.1, 1, width).astype(np.float32)
    tensors = q.quantize(weight, settings)
    expected = kernel_reference(x[0], tensors, settings)
    portable = flax_quant.quantized_matmul(jnp.asarray(x), tensors, q.with_kernel(settings, "portable"))
    native = flax_quant.quantized_matmul(jnp.asarray(x), tensors, q.with_kernel(settings, "cpu"))
    np.testing.assert_allclose(np.asarray(native)[0], expected, atol=1e-4, rtol=0)
    layer = torch_quant.QuantizedLinear(width, 63, False, q.with_kernel(settings, "cpu"))
    for leaf, array in tensors.items():
        getattr(layer, leaf).copy_(torch.from_numpy(array))
    with torch.no_grad():
        np.testing.assert_allclose(layer(torch.from_numpy(x)).numpy()[0], expected, atol=1e-4, rtol=0)
    bound = np.abs(rounded_to_int16(x[0]) - x[0]) @ np.abs(weight_parts(tensors, settings)[0]).T if rows == 1 else 0
    assert np.all(np.abs(np.asarray(native)[0] - np.asarray(portable)[0]) <= bound + 1e-4)


@pytest.mark.parametrize("name", ["int8", "int4-g32"])
def test_the_kernel_splits_a_large_layer_among_its_threads_for_concurrent_callers(name):
    """A layer of many tasks (the threads share its output rows), multiplied by 4 callers at once on
    each twin: every product equals kernel_reference, and one input's results are bit-identical
    (each output row is computed whole by one thread, whichever takes it)."""
    settings = q.with_kernel(SETTINGS[name], "cpu")
    rng = np.random.default_rng(11)
    weight = rng.standard_normal((2048, 512)).astype(np.float32)  # 8 tasks of 128 KiB of int8 codes, 4 of int4
    tensors = q.quantize(weight, settings)
    xs = [rng.standard_normal((1, 512)).astype(np.float32) for _ in range(2)]
    layer = torch_quant.QuantizedLinear(512, 2048, False, settings)
    for leaf, array in tensors.items():
        getattr(layer, leaf).copy_(torch.from_numpy(array))
    flax_product = jax.jit(lambda x: flax_quant.quantized_matmul(x, tensors, settings))
    products = {"flax": lambda x: np.asarray(flax_product(jnp.asarray(x))),
                "torch": lambda x: layer(torch.from_numpy(x)).numpy()}
    for twin, product in products.items():
        with torch.no_grad(), ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda i: product(xs[i % 2]), range(16)))
        for i, result in enumerate(results):
            np.testing.assert_allclose(result, kernel_reference(xs[i % 2], tensors, settings), atol=1e-4, rtol=0,
                                       err_msg=f"{twin}, call {i}")
            np.testing.assert_array_equal(result, results[i % 2], err_msg=f"{twin}, call {i}")


class SharedInputLayers(nn.Module):
    """Three biased QuantizedDense layers of one input (q, k and v's shape), multiplied together or one by one."""

    settings: q.QuantizationConfig
    together: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        layers = [flax_quant.QuantizedDense(features, self.settings, use_bias=True, name=f"layer_{i}")
                  for i, features in enumerate(SHARED_INPUT_FEATURES)]
        return flax_quant.shared_input_products(x, layers) if self.together else [layer(x) for layer in layers]


SHARED_INPUT_FEATURES = (96, 48, 48)


def torch_kernel_calls(monkeypatch) -> list[int]:
    """The torch twin's native kernel calls from now on, each as the number of layers it multiplies."""
    calls = []
    multiply = torch_native.KernelCall.multiply
    monkeypatch.setattr(torch_native.KernelCall, "multiply",
                        lambda self, rows: calls.append(len(self.layers)) or multiply(self, rows))
    return calls


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("name", ["int8", "int4-g32", "int4-g64-zp", "int4-g32-fzp"])
def test_layers_that_share_an_input_take_one_kernel_call_that_equals_calling_each(name, rows, monkeypatch):
    """shared_input_products (q, k and v; gate and up) multiplies its layers in one native call in both
    twins, each output (bias included) equal bit for bit to its layer called alone, and in Flax
    differentiates as they do."""
    settings = q.with_kernel(SETTINGS[name], "cpu")
    rng = np.random.default_rng(3)
    tensors = [{**q.quantize(rng.standard_normal((features, 128)).astype(np.float32), settings),
                "bias": rng.standard_normal(features).astype(np.float32)} for features in SHARED_INPUT_FEATURES]
    x = rng.standard_normal((1, rows, 128)).astype(np.float32)

    params = {"params": {f"layer_{i}": {k: jnp.asarray(v) for k, v in t.items()} for i, t in enumerate(tensors)}}
    products = {together: jax.jit(SharedInputLayers(settings, together).apply) for together in (True, False)}
    flax_outputs = {together: product(params, jnp.asarray(x)) for together, product in products.items()}
    target = flax_native.TARGETS[settings.bits][0]
    kernel_calls = {together: product.lower(params, jnp.asarray(x)).as_text().count(target)
                    for together, product in products.items()}
    assert kernel_calls == {True: 1, False: 3}
    for together, alone in zip(flax_outputs[True], flax_outputs[False]):
        np.testing.assert_array_equal(np.asarray(together), np.asarray(alone))
    def gradient(together: bool) -> jax.Array:  # the portable products' derivatives, both ways
        return jax.grad(lambda x: sum(y.sum() for y in SharedInputLayers(settings, together).apply(params, x)))(
            jnp.asarray(x))
    np.testing.assert_allclose(gradient(True), gradient(False), atol=1e-5, rtol=0)

    layers = []
    for features, t in zip(SHARED_INPUT_FEATURES, tensors):
        layer = torch_quant.QuantizedLinear(128, features, True, settings)
        for leaf, array in t.items():
            getattr(layer, leaf).data.copy_(torch.from_numpy(array))
        layers.append(layer)
    calls = torch_kernel_calls(monkeypatch)
    with torch.no_grad():
        together = torch_quant.shared_input_products(torch.from_numpy(x), layers)
        assert calls == [3]
        alone = [layer(torch.from_numpy(x)) for layer in layers]
    for a, b, flax_output in zip(together, alone, flax_outputs[True]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        np.testing.assert_allclose(a.numpy(), np.asarray(flax_output), atol=1e-4, rtol=0)


def test_a_torch_layer_with_a_forward_hook_is_called_rather_than_joined():
    """A hook on k_proj (say, to read its output) still fires: shared_input_products calls the layers."""
    settings = q.with_kernel(SETTINGS["int4-g32"], "cpu")
    layers = [torch_quant.QuantizedLinear(128, features, False, settings) for features in SHARED_INPUT_FEATURES]
    seen = []
    layers[1].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    with torch.no_grad():
        torch_quant.shared_input_products(torch.ones(1, 1, 128), layers)
    assert seen == [(1, 1, 48)]


@pytest.mark.parametrize("cls", [LlamaForCausalLM, FlaxLlamaForCausalLM])
def test_a_quantized_decoder_layer_makes_four_kernel_calls(cls, realistic, monkeypatch):
    """q/k/v and gate/up share their calls in a whole model: 4 a decoder layer and 1 for the head."""
    settings = q.with_kernel(SETTINGS["int4-g32"], "cpu")
    model = cls.from_pretrained(realistic, quantization=settings)
    ids = np.ones((1, 1), np.int64)
    expected = 4 * REALISTIC["num_hidden_layers"] + 1
    if cls is FlaxLlamaForCausalLM:
        text = jax.jit(lambda params: model.module.apply({"params": params}, ids)).lower(model.params).as_text()
        assert text.count(flax_native.TARGETS[4][0]) == expected
        return
    calls = torch_kernel_calls(monkeypatch)
    with torch.no_grad():
        model(torch.from_numpy(ids))
    layers = REALISTIC["num_hidden_layers"]
    assert sorted(calls) == [1] * (2 * layers + 1) + [2] * layers + [3] * layers  # o, down, head; gate/up; q/k/v


def test_a_non_finite_input_row_gives_non_finite_outputs_in_the_kernel():
    settings = q.with_kernel(SETTINGS["int4-g32"], "cpu")
    tensors = q.quantize(np.random.default_rng(0).standard_normal((16, 128)).astype(np.float32), settings)
    for bad in (np.inf, np.nan):
        x = np.ones((1, 128), np.float32)
        x[0, 70] = bad
        assert not np.isfinite(np.asarray(flax_quant.quantized_matmul(jnp.asarray(x), tensors, settings))).any()


@pytest.mark.parametrize("rows", [1, 3])
def test_a_quantized_embeddings_tied_head_takes_the_kernel_in_both_twins(rows):
    """attend() of a quantized embedding (a GGUF model's tied head) is the native product, as a linear layer's."""
    settings = q.with_kernel(SETTINGS["int4-g32"], "cpu")
    rng = np.random.default_rng(4)
    tensors = q.quantize(rng.standard_normal((96, 128)).astype(np.float32), settings)
    x = rng.standard_normal((rows, 128)).astype(np.float32)
    expected = kernel_reference(x, tensors, settings)
    embedding = torch_quant.QuantizedEmbedding(96, 128, settings)
    embedding.load_state_dict({leaf: torch.from_numpy(a) for leaf, a in tensors.items()})
    with torch.no_grad():
        np.testing.assert_allclose(embedding.attend(torch.from_numpy(x)).numpy(), expected, atol=1e-4, rtol=0)
    narrow = torch_quant.QuantizedEmbedding(8, 40, q.with_kernel(SETTINGS["int8"], "cpu"))
    with pytest.raises(ConfigError, match="groups of a multiple of 16 input columns, the layer's are 40"):
        narrow.attend(torch.ones((1, 40)))
    flax_embedding = flax_quant.QuantizedEmbed(96, 128, settings)
    attended = flax_embedding.apply({"params": tensors}, jnp.asarray(x), method=flax_quant.QuantizedEmbed.attend)
    np.testing.assert_allclose(np.asarray(attended), expected, atol=1e-4, rtol=0)


def test_the_torch_kernel_sees_a_layer_changed_in_place_or_reloaded():
    """The torch layer caches the kernel's operands; a stored tensor changed in place or a state dict
    loaded into the layer rebuilds them."""
    settings = q.with_kernel(SETTINGS["int4-g32-fzp"], "cpu")
    rng = np.random.default_rng(2)
    first, second = (q.quantize(rng.standard_normal((32, 64)).astype(np.float32), settings) for _ in range(2))
    layer = torch_quant.QuantizedLinear(64, 32, False, settings)
    x = torch.from_numpy(rng.standard_normal((1, 64)).astype(np.float32))
    with torch.no_grad():
        layer.load_state_dict({leaf: torch.from_numpy(a) for leaf, a in first.items()})
        before = layer(x).numpy()
        layer.scales.mul_(2)
        layer.mins.mul_(2)
        np.testing.assert_allclose(layer(x).numpy(), 2 * before, rtol=1e-5, atol=1e-5)
        layer.load_state_dict({leaf: torch.from_numpy(a) for leaf, a in second.items()})
        expected = kernel_reference(x.numpy(), second, settings)
        np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-4, rtol=0)


def test_kernel_cpu_where_there_is_none_is_an_error_and_auto_falls_back():
    settings = SETTINGS["int8"]
    tensors = q.quantize(np.ones((40, 40), np.float32), settings)
    x = jnp.ones((1, 40))
    with pytest.raises(ConfigError, match="groups of a multiple of 16 input columns, the layer's are 40"):
        flax_quant.quantized_matmul(x, tensors, q.with_kernel(settings, "cpu"))
    expected = q.dequantize(tensors, settings).sum(1)
    np.testing.assert_allclose(np.asarray(flax_quant.quantized_matmul(x, tensors, settings))[0], expected, rtol=1e-6)
    layer = torch_quant.QuantizedLinear(40, 40, False, q.with_kernel(settings, "cpu"))
    for leaf, array in tensors.items():
        getattr(layer, leaf).copy_(torch.from_numpy(array))
    with pytest.raises(ConfigError, match="groups of a multiple of 16 input columns, the layer's are 40"):
        layer(torch.ones((1, 40)))
    layer.quantization = settings  # kernel "auto"
    np.testing.assert_allclose(layer(torch.ones((1, 40))).detach().numpy()[0], expected, rtol=1e-6)


def test_without_the_native_kernel_cpu_is_an_error_and_auto_warns_and_takes_the_portable_product(monkeypatch):
    settings = SETTINGS["int4-g32"]
    tensors = q.quantize(np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32), settings)
    expected = np.ones((1, 64), np.float32) @ q.dequantize(tensors, settings).T
    no_compiler = "no C++ compiler: 'c++' is not on the PATH"
    monkeypatch.setattr(flax_native, "unavailable_reason", lambda: no_compiler)
    monkeypatch.setattr(torch_native, "unavailable_reason", lambda: no_compiler)
    x = jnp.ones((1, 64))
    with pytest.raises(ConfigError, match="kernel 'cpu' cannot run here: no C\\+\\+ compiler"):
        flax_quant.quantized_matmul(x, tensors, q.with_kernel(settings, "cpu"))
    with pytest.warns(RuntimeWarning, match="native CPU kernel .* unavailable \\(no C\\+\\+ compiler"):
        fallback = flax_quant.quantized_matmul(x, tensors, settings)
    np.testing.assert_allclose(np.asarray(fallback), expected, rtol=1e-5)
    layer = torch_quant.QuantizedLinear(64, 32, False, q.with_kernel(settings, "cpu"))
    for leaf, array in tensors.items():
        getattr(layer, leaf).copy_(torch.from_numpy(array))
    with pytest.raises(ConfigError, match="kernel 'cpu' cannot run here: no C\\+\\+ compiler"):
        layer(torch.ones((1, 64)))
    layer.quantization = settings
    with pytest.warns(RuntimeWarning, match="native CPU kernel .* unavailable \\(no C\\+\\+ compiler"):
        fallback = layer(torch.ones((1, 64)))
    np.testing.assert_allclose(fallback.detach().numpy(), expected, rtol=1e-5)


def test_a_failed_kernel_build_names_the_compiler_and_its_error(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMA_TWIN_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")
    with pytest.raises(shared_native.KernelBuildError, match="false .*xla_ffi.cc.* failed"):
        shared_native.build(flax_native.SOURCE)
    assert list((tmp_path / "kernels").iterdir()) == []  # no half-written library is left behind
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(shared_native.KernelBuildError, match="'no-such-compiler' is not on the PATH"):
        shared_native.build(torch_native.SOURCE)


def test_auto_takes_the_native_kernel_for_up_to_native_max_rows_rows_on_the_cpu():
    settings = SETTINGS["int4-g32"]
    tensors = {leaf: jnp.asarray(a) for leaf, a in q.quantize(np.ones((64, 64), np.float32), settings).items()}

    def native(rows: int) -> bool:
        jaxpr = jax.make_jaxpr(lambda x: flax_quant.quantized_matmul(x, tensors, settings))(jnp.ones((rows, 64)))
        return "ffi_call" in str(jaxpr)

    assert native(1) and native(shared_native.MAX_ROWS) and not native(shared_native.MAX_ROWS + 1)


@pytest.mark.parametrize("name", ["int8", "int4-g32-fzp"])
def test_the_native_kernel_differentiates_as_the_portable_product(name):
    """QLoRA trains through a quantized base: gradients reach x (and Flax's float scales) through the kernel."""
    settings = SETTINGS[name]
    rng = np.random.default_rng(1)
    tensors = {leaf: jnp.asarray(a) for leaf, a in q.quantize(rng.standard_normal((32, 64)).astype(np.float32),
                                                                settings).items()}
    x = jnp.asarray(rng.standard_normal((3, 64)), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((3, 32)), jnp.float32)

    def loss(kernel: str):
        return lambda x, scales: jnp.vdot(cotangent, flax_quant.quantized_matmul(
            x, {**tensors, "scales": scales}, q.with_kernel(settings, kernel)))

    native = jax.grad(loss("cpu"), argnums=(0, 1))(x, tensors["scales"])
    portable = jax.grad(loss("portable"), argnums=(0, 1))(x, tensors["scales"])
    for a, b in zip(native, portable):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    bfloat16 = flax_quant.quantized_matmul(x.astype(jnp.bfloat16), tensors, q.with_kernel(settings, "cpu"))
    assert bfloat16.dtype == jnp.bfloat16
    layer = torch_quant.QuantizedLinear(64, 32, False, settings)
    for leaf, array in tensors.items():
        getattr(layer, leaf).copy_(torch.from_numpy(np.array(array)))

    def torch_gradient(kernel: str) -> np.ndarray:
        layer.quantization = q.with_kernel(settings, kernel)
        x_torch = torch.from_numpy(np.array(x)).requires_grad_()
        torch.vdot(torch.from_numpy(np.array(cotangent)).flatten(), layer(x_torch).flatten()).backward()
        return x_torch.grad.numpy()

    np.testing.assert_allclose(torch_gradient("portable"), torch_gradient("cpu"), rtol=1e-6)
    assert layer(torch.from_numpy(np.array(x)).bfloat16()).dtype == torch.bfloat16
