"""llama_flax.parallel: the rule table, specs, mesh building and sharded loading in this process (one
device); the 8-device meshes, pmap and two jax.distributed processes in subprocesses
(tests/flax/parallel_checks.py), since XLA_FLAGS must be set before jax starts."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from llama_flax import parallel, sharding
from llama_flax.modeling import (FlaxLlamaForCausalLM, FlaxLlamaForQuestionAnswering,
                                 FlaxLlamaForSequenceClassification, FlaxLlamaForTokenClassification, FlaxLlamaModel)
from llama_shared.checkpoints import SINGLE_FILE, Checkpoint, save_tensors
from llama_shared.config import LlamaConfig
from llama_shared.naming import flatten_tree

HELPER = os.path.join(os.path.dirname(__file__), "parallel_checks.py")
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, attention_bias=True, mlp_bias=True, num_labels=3)


@pytest.mark.parametrize("model_class", [FlaxLlamaModel, FlaxLlamaForCausalLM, FlaxLlamaForSequenceClassification,
                                         FlaxLlamaForQuestionAnswering, FlaxLlamaForTokenClassification])
def test_every_parameter_has_logical_axes(model_class):
    model = model_class.__new__(model_class)
    model.module = model_class.module_class(LlamaConfig(**TINY))
    for path, shape in model.param_shapes().items():
        assert len(sharding.param_logical_axes(path)) == len(shape.shape), path


def test_rule_table_shards_fsdp_on_embed_and_tensor_on_heads_mlp_vocab():
    sizes = {"data": 2, "fsdp": 4, "tensor": 2}
    spec = lambda path, shape: sharding.fit_spec(sharding.param_logical_axes(path), shape, sizes)  # noqa: E731
    assert spec("model/layers/0/self_attn/q_proj/kernel", (64, 64)) == P("fsdp", "tensor")
    assert spec("model/layers/0/self_attn/o_proj/kernel", (64, 64)) == P("tensor", "fsdp")
    assert spec("model/layers/0/mlp/up_proj/kernel", (64, 96)) == P("fsdp", "tensor")
    assert spec("model/layers/0/mlp/down_proj/kernel", (96, 64)) == P("tensor", "fsdp")
    assert spec("model/embed_tokens/embedding", (128, 64)) == P("tensor", "fsdp")
    assert spec("lm_head/kernel", (64, 128)) == P("fsdp", "tensor")
    assert spec("model/layers/0/input_layernorm/weight", (64,)) == P(None)
    assert sharding.fit_spec(("batch", "length"), (8, 16), sizes) == P(("data", "fsdp"), None)


def test_adapters_and_quantized_weights_take_their_base_kernels_axes():
    sizes = {"data": 2, "fsdp": 4, "tensor": 2}
    spec = lambda path, shape: sharding.fit_spec(sharding.param_logical_axes(path), shape, sizes)  # noqa: E731
    assert spec("model/layers/0/self_attn/q_proj/lora_A/kernel", (64, 8)) == P("fsdp", None)
    assert spec("model/layers/0/self_attn/q_proj/lora_B/kernel", (8, 64)) == P(None, "tensor")
    assert spec("model/layers/scan/mlp/down_proj/lora_A/kernel", (2, 96, 8)) == P(None, "tensor", None)
    assert spec("lm_head/lora_B/kernel", (8, 128)) == P(None, "tensor")
    assert spec("model/layers/0/self_attn/o_proj/qweight", (64, 32)) == P("fsdp", "tensor")   # [out, in]
    assert spec("model/layers/0/self_attn/o_proj/scales", (64, 2)) == P("fsdp", None)


def test_mesh_axes_that_do_not_divide_a_dimension_are_dropped():
    sizes = {"data": 2, "fsdp": 4, "tensor": 4}
    # two kv heads of 16 = 32 columns split 4 ways; three kv heads of 10 do not split
    assert sharding.fit_spec(("embed", "kv_heads"), (64, 32), sizes) == P("fsdp", "tensor")
    assert sharding.fit_spec(("embed", "kv_heads"), (64, 30), sizes) == P("fsdp", None)
    assert sharding.fit_spec(("batch",), (2,), sizes) == P("data")
    assert sharding.fit_spec(("batch",), (3,), sizes) == P(None)


def test_stacked_layer_params_get_a_leading_layers_axis_kept_whole():
    sizes = {"data": 2, "fsdp": 2, "tensor": 2}
    path = "model/layers/scan/self_attn/q_proj/kernel"
    assert sharding.param_logical_axes(path) == ("layers", "embed", "heads")
    assert sharding.fit_spec(sharding.param_logical_axes(path), (4, 64, 64), sizes) == P(None, "fsdp", "tensor")
    assert sharding.param_logical_axes("model/layers/scan/input_layernorm/weight") == ("layers", "hidden")


def test_unknown_parameter_is_named():
    with pytest.raises(ValueError, match="model/adapter/kernel"):
        sharding.param_logical_axes(("model", "adapter", "kernel"))


def test_make_mesh_fills_minus_one_and_checks_sizes():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == sharding.MESH_AXES
    assert dict(mesh.shape) == {"data": 1, "fsdp": len(jax.devices()), "tensor": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="needs 3 devices"):
        parallel.make_mesh(data=3, fsdp=1)
    with pytest.raises(ValueError, match="one may be -1"):
        parallel.make_mesh(data=-1, fsdp=-1)


def test_constrain_is_a_no_op_off_mesh():
    x = jax.numpy.ones((2, 3, 4))
    assert sharding.constrain(x, "batch", "length", "hidden") is x


def test_sharded_loading_on_one_device_equals_from_pretrained(hf_checkpoint):
    folder = hf_checkpoint()
    mesh = parallel.make_mesh()
    sharded = parallel.from_pretrained_sharded(FlaxLlamaForCausalLM, folder, mesh, dtype="bfloat16")
    plain = FlaxLlamaForCausalLM.from_pretrained(folder, dtype="bfloat16")
    expected = flatten_tree(plain.params)
    for path, array in flatten_tree(sharded.params).items():
        assert array.dtype == expected[path].dtype
        np.testing.assert_array_equal(np.asarray(array), np.asarray(expected[path]), err_msg="/".join(path))
    ids = np.arange(3, 19).reshape(2, 8)
    np.testing.assert_array_equal(np.asarray(parallel.jit_forward(sharded, mesh)(sharded.params, ids)),
                                  np.asarray(plain(ids).logits))


def test_pmap_forward_takes_the_mask_or_none(hf_checkpoint):
    """The mask is optional, as documented: without it every token attends causally."""
    model = FlaxLlamaForCausalLM.from_pretrained(hf_checkpoint())
    ids = np.random.default_rng(0).integers(3, 128, size=(2, 12))
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    forward = parallel.pmap_forward(model)
    without = np.asarray(forward(model.params, ids[None]))[0]
    with_mask = np.asarray(forward(model.params, ids[None], mask[None]))[0]
    np.testing.assert_allclose(without, np.asarray(model(ids).logits), rtol=0, atol=1e-5)
    np.testing.assert_allclose(with_mask[1, 4:], np.asarray(model(ids, mask).logits)[1, 4:], rtol=0, atol=1e-5)


def test_sharded_params_do_not_alias_the_checkpoint_file(tmp_path):
    """jax.device_put on the CPU aliases a 64-byte-aligned host buffer instead of copying it. A block
    sliced from the memory-mapped checkpoint must not be handed over as it is: the params would then
    change (or fault) when the file is rewritten, as save_pretrained into the same folder does."""
    model = FlaxLlamaForCausalLM(LlamaConfig(**TINY))
    model.save_pretrained(tmp_path / "saved")
    saved = Checkpoint(tmp_path / "saved")
    tensors = {key: saved.read(key) for key in saved.keys()}
    for pad in range(64):  # a data section starting on a 64-byte boundary puts every tensor on one
        save_tensors(tmp_path, tensors, metadata={"pad": "x" * pad})
        with open(tmp_path / SINGLE_FILE, "rb") as f:
            data_start = 8 + struct.unpack("<Q", f.read(8))[0]
        if data_start % 64 == 0:
            break
    model.config.save_pretrained(tmp_path)
    sharded = parallel.from_pretrained_sharded(FlaxLlamaForCausalLM, tmp_path, parallel.make_mesh())
    loaded = {path: np.array(array) for path, array in flatten_tree(sharded.params).items()}
    with open(tmp_path / SINGLE_FILE, "r+b") as f:
        f.seek(data_start)
        f.write(bytes(os.path.getsize(tmp_path / SINGLE_FILE) - data_start))
    for path, array in flatten_tree(sharded.params).items():
        np.testing.assert_array_equal(np.asarray(array), loaded[path], err_msg="/".join(path))


def test_initialize_distributed_names_missing_variables(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
    monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
        parallel.initialize_distributed()


def run_helper(*args: str, timeout: int = 600) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return subprocess.Popen([sys.executable, HELPER, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_eight_devices_meshes_and_pmap_equal_one_device(hf_checkpoint):
    process = run_helper("meshes", hf_checkpoint())
    output, _ = process.communicate(timeout=900)
    checks = [json.loads(line) for line in output.splitlines() if line.startswith('{"check"')]
    names = {c["check"] for c in checks}
    for shape in ("(8, 1, 1)", "(1, 8, 1)", "(1, 2, 4)", "(2, 2, 2)"):
        for what in ("load", "logits", "greedy generation", "train step"):
            assert f"{what} {shape}" in names, output[-3000:]
    assert {"pmap logits", "pmap train step"} <= names
    assert {f"scanned {what} (2, 2, 2)" for what in ("load", "logits", "greedy generation", "train step")} <= names
    failed = [c for c in checks if not c["ok"]]
    assert not failed and process.returncode == 0, failed or output[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_run_one_sharded_train_step_and_agree(hf_checkpoint, tmp_path):
    from tests.flax.parallel_checks import batch, train_config

    from llama_flax.training import Trainer

    folder, port = hf_checkpoint(), str(free_port())
    processes = [run_helper("multihost", folder, str(i), port, str(tmp_path / f"process{i}.npz")) for i in (0, 1)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), "\n".join(o[-2000:] for o in outputs)
    results = [np.load(tmp_path / f"process{i}.npz") for i in (0, 1)]
    assert all(int(r["processes"]) == 2 and int(r["local_devices"]) == 2 for r in results)

    model = FlaxLlamaForCausalLM.from_pretrained(folder)
    ids, mask = batch()
    trainer = Trainer(model, train_config())
    state, metrics = trainer.step(trainer.init_state(), {"input_ids": ids, "attention_mask": mask})
    for result in results:
        assert abs(float(result["loss"]) - float(metrics["loss"])) <= 1e-5
        for path, expected in flatten_tree(jax.device_get(state.params)).items():
            np.testing.assert_allclose(result["/".join(path)], expected, atol=1e-5, rtol=0, err_msg="/".join(path))
