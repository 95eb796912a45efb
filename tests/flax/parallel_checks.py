"""Checks that need several devices or processes, run as scripts in their own process (XLA_FLAGS must
be set before jax starts, which a pytest process has already done). tests/flax/test_parallel.py runs
them, and imports batch() and train_config() to compute the one-process reference.

    python tests/flax/parallel_checks.py meshes CHECKPOINT_DIR
        On 8 simulated CPU devices: logits, greedy generation and one train step (loss, updated params)
        on meshes (8,1,1), (1,8,1), (1,2,4), (2,2,2) and under pmap, each against one device; the
        same three with scanned layers (scan_layers=True) on (2,2,2) against the unrolled model on one;
        a LoRA step (unrolled, scanned, over an int8 base) on (2,2,2) and under pmap against one device.
    python tests/flax/parallel_checks.py multihost CHECKPOINT_DIR PROCESS_ID PORT OUT_FILE
        One of two processes (2 CPU devices each) joined by jax.distributed: sharded loading and one
        sharded train step; writes the loss and the updated params (gathered) to OUT_FILE (.npz).

Each prints one JSON line per check and exits non-zero if a check fails.
"""

from __future__ import annotations

import json
import os
import sys

MESHES = ((8, 1, 1), (1, 8, 1), (1, 2, 4), (2, 2, 2))
TOLERANCE = 1e-5
BATCH, SEQ, NEW_TOKENS = 16, 16, 8


def main(argv: list[str]) -> int:
    mode = argv[0]
    devices = 8 if mode == "meshes" else 2
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    tests_flax = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.dirname(os.path.dirname(tests_flax)))  # the repo root, two folders up
    if mode == "meshes":
        return check_meshes(argv[1])
    return check_multihost(argv[1], int(argv[2]), int(argv[3]), argv[4])


def batch():
    """16 rows of 16 random tokens, rows 1 and 5 left-padded."""
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(3, 128, (BATCH, SEQ)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :5] = 0
    mask[5, :9] = 0
    ids[mask == 0] = 0
    return ids, mask


def train_config():
    """AdamW's first step is lr * g / (|g| + eps): eps 1e-3 keeps float32 rounding of near-zero gradients
    (different reduction orders on different meshes) from being magnified past the tolerance."""
    from llama_flax.training import TrainConfig

    return TrainConfig(learning_rate=1e-2, warmup_steps=0, total_steps=10, eps=1e-3, accumulation_steps=2)


def max_difference(a, b) -> float:
    import jax
    import numpy as np

    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def report(results: list[dict], name: str, ok: bool, **figures) -> None:
    line = {"check": name, "ok": bool(ok), **figures}
    results.append(line)
    print(json.dumps(line), flush=True)


def check_meshes(checkpoint: str) -> int:
    import jax
    import numpy as np

    from llama_flax import parallel, sharding
    from llama_flax.modeling import FlaxLlamaForCausalLM
    from llama_flax.scan import unstack_layers
    from llama_flax.training import Trainer

    assert len(jax.devices()) == 8, jax.devices()
    ids, mask = batch()
    data = {"input_ids": ids, "attention_mask": mask}
    reference = FlaxLlamaForCausalLM.from_pretrained(checkpoint)
    logits = np.asarray(reference(ids, mask).logits)
    tokens = np.asarray(reference.generate(ids, mask, max_new_tokens=NEW_TOKENS, do_sample=False))
    trainer = Trainer(reference, train_config())
    state, metrics = trainer.step(trainer.init_state(), data)
    loss, params = float(metrics["loss"]), jax.device_get(state.params)

    results: list[dict] = []
    for shape in MESHES:
        mesh = parallel.make_mesh(*shape)
        model = parallel.from_pretrained_sharded(FlaxLlamaForCausalLM, checkpoint, mesh)
        expected = sharding.param_shardings(model.params, mesh)
        placed = all(p.sharding.is_equivalent_to(s, p.ndim) for p, s in
                     zip(jax.tree.leaves(model.params), jax.tree.leaves(expected)))
        biggest_shard = max(p.addressable_shards[0].data.size / p.size for p in jax.tree.leaves(model.params)
                            if p.ndim == 2)
        # params are split fsdp x tensor ways (every tiny-model matrix divides), replicated over data
        report(results, f"load {shape}", placed and biggest_shard <= 1 / (shape[1] * shape[2]),
               largest_matrix_shard=biggest_shard)

        sharded_logits = parallel.jit_forward(model, mesh)(model.params, ids, mask)
        diff = float(np.max(np.abs(np.asarray(sharded_logits) - logits)))
        report(results, f"logits {shape}", diff <= TOLERANCE, max_abs_diff=diff,
               logits_spec=str(sharded_logits.sharding.spec))

        sharded_tokens = np.asarray(parallel.generate(model, mesh, ids, mask, max_new_tokens=NEW_TOKENS,
                                                      do_sample=False))
        report(results, f"greedy generation {shape}", np.array_equal(sharded_tokens, tokens),
               differing_tokens=int(np.sum(sharded_tokens != tokens)))

        sharded_trainer = Trainer(model, train_config(), mesh)
        sharded_state, sharded_metrics = sharded_trainer.step(sharded_trainer.init_state(), data)
        loss_diff = abs(float(sharded_metrics["loss"]) - loss)
        param_diff = max_difference(jax.device_get(sharded_state.params), params)
        report(results, f"train step {shape}", loss_diff <= TOLERANCE and param_diff <= TOLERANCE,
               loss_diff=loss_diff, param_max_abs_diff=param_diff)

    mesh = parallel.make_mesh(2, 2, 2)
    model = parallel.from_pretrained_sharded(FlaxLlamaForCausalLM, checkpoint, mesh, scan_layers=True)
    expected = sharding.param_shardings(model.params, mesh)
    placed = all(p.sharding.is_equivalent_to(s, p.ndim) for p, s in
                 zip(jax.tree.leaves(model.params), jax.tree.leaves(expected)))
    q_kernel = model.params["model"]["layers"]["scan"]["self_attn"]["q_proj"]["kernel"]
    q_spec = jax.sharding.PartitionSpec(None, "fsdp", "tensor")   # the layer axis whole, then (fsdp, tensor)
    report(results, "scanned load (2, 2, 2)", placed and q_kernel.sharding.spec == q_spec,
           q_proj_spec=str(q_kernel.sharding.spec))
    diff = float(np.max(np.abs(np.asarray(parallel.jit_forward(model, mesh)(model.params, ids, mask)) - logits)))
    report(results, "scanned logits (2, 2, 2)", diff <= TOLERANCE, max_abs_diff=diff)
    sharded_tokens = np.asarray(parallel.generate(model, mesh, ids, mask, max_new_tokens=NEW_TOKENS, do_sample=False))
    report(results, "scanned greedy generation (2, 2, 2)", np.array_equal(sharded_tokens, tokens),
           differing_tokens=int(np.sum(sharded_tokens != tokens)))
    sharded_trainer = Trainer(model, train_config(), mesh)
    sharded_state, sharded_metrics = sharded_trainer.step(sharded_trainer.init_state(), data)
    loss_diff = abs(float(sharded_metrics["loss"]) - loss)
    param_diff = max_difference(unstack_layers(jax.device_get(sharded_state.params)), params)
    report(results, "scanned train step (2, 2, 2)", loss_diff <= TOLERANCE and param_diff <= TOLERANCE,
           loss_diff=loss_diff, param_max_abs_diff=param_diff)

    pmap_logits = parallel.pmap_forward(reference)(reference.params, parallel.split_for_pmap(ids, 8),
                                                   parallel.split_for_pmap(mask, 8))
    diff = float(np.max(np.abs(np.asarray(pmap_logits).reshape(logits.shape) - logits)))
    report(results, "pmap logits", diff <= TOLERANCE, max_abs_diff=diff,
           shard_shape=list(pmap_logits.addressable_shards[0].data.shape))
    pmap_state, pmap_metrics = trainer.pmap_step(trainer.init_state(), data)
    loss_diff = abs(float(pmap_metrics["loss"]) - loss)
    param_diff = max_difference(jax.device_get(pmap_state.params), params)
    report(results, "pmap train step", loss_diff <= TOLERANCE and param_diff <= TOLERANCE,
           loss_diff=loss_diff, param_max_abs_diff=param_diff)
    check_lora(checkpoint, data, results)
    return 0 if all(r["ok"] for r in results) else 1


def check_lora(checkpoint: str, data: dict, results: list[dict]) -> None:
    """A LoRA step (only the adapter trains) on the (2, 2, 2) mesh, unrolled, scanned and over an int8
    base (QLoRA), and under pmap, each against one device; the adapter's A takes its base kernel's
    input sharding."""
    import jax

    from llama_flax import parallel
    from llama_flax.modeling import FlaxLlamaForCausalLM
    from llama_flax.scan import unstack_layers
    from llama_flax.training import Trainer
    from llama_shared.lora import LoraConfig

    adapter = LoraConfig(r=4, lora_alpha=8, target_modules=("q_proj", "v_proj", "down_proj", "lm_head"))
    mesh = parallel.make_mesh(2, 2, 2)
    for name, quantization, scan_layers in (("lora", None, False), ("scanned lora", None, True),
                                            ("qlora int8", "int8", False)):
        reference = FlaxLlamaForCausalLM.from_pretrained(checkpoint, quantization=quantization)
        reference.add_adapter(adapter)
        trainer = Trainer(reference, train_config())
        state, metrics = trainer.step(trainer.init_state(), data)
        if quantization is None:
            model = parallel.from_pretrained_sharded(FlaxLlamaForCausalLM, checkpoint, mesh, scan_layers=scan_layers)
        else:
            model = FlaxLlamaForCausalLM.from_pretrained(checkpoint, quantization=quantization)
        model.add_adapter(adapter)
        sharded_trainer = Trainer(model, train_config(), mesh)
        sharded_state, sharded_metrics = sharded_trainer.step(sharded_trainer.init_state(), data)
        params = jax.device_get(sharded_state.params)
        loss_diff = abs(float(sharded_metrics["loss"]) - float(metrics["loss"]))
        param_diff = max_difference(unstack_layers(params) if scan_layers else params, jax.device_get(state.params))
        layer = sharded_state.params["model"]["layers"]["scan" if scan_layers else "0"]["self_attn"]["q_proj"]
        spec = tuple(layer["lora_A"]["kernel"].sharding.spec)[-2:]
        report(results, f"{name} train step (2, 2, 2)", loss_diff <= TOLERANCE and param_diff <= TOLERANCE
               and spec == ("fsdp", None), loss_diff=loss_diff, param_max_abs_diff=param_diff, lora_a_spec=str(spec))
        if name == "lora":
            pmap_state, pmap_metrics = trainer.pmap_step(trainer.init_state(), data)
            loss_diff = abs(float(pmap_metrics["loss"]) - float(metrics["loss"]))
            param_diff = max_difference(jax.device_get(pmap_state.params), jax.device_get(state.params))
            report(results, "lora pmap train step", loss_diff <= TOLERANCE and param_diff <= TOLERANCE,
                   loss_diff=loss_diff, param_max_abs_diff=param_diff)


def check_multihost(checkpoint: str, process_id: int, port: int, out_file: str) -> int:
    import jax

    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    import numpy as np

    from llama_flax import parallel
    from llama_flax.modeling import FlaxLlamaForCausalLM
    from llama_flax.training import Trainer
    from llama_shared.naming import flatten_tree

    mesh = parallel.make_mesh(data=2, fsdp=2)
    model = parallel.from_pretrained_sharded(FlaxLlamaForCausalLM, checkpoint, mesh)
    ids, mask = batch()
    trainer = Trainer(model, train_config(), mesh)
    state, metrics = trainer.step(trainer.init_state(), {"input_ids": ids, "attention_mask": mask})
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    gathered = jax.jit(lambda p: p, out_shardings=replicated)(state.params)
    arrays = {"/".join(path): np.asarray(leaf.addressable_shards[0].data)
              for path, leaf in flatten_tree(gathered).items()}
    np.savez(out_file, loss=np.float64(metrics["loss"]), processes=jax.process_count(),
             local_devices=len(jax.local_devices()), **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
