"""Training the Flax twin with optax: the causal-LM train step, gradient accumulation, mixed precision,
remat, and Orbax checkpoints of the whole train state.

The step sums the token losses and gradients of its micro-batches and divides once by the number of
target tokens, so k accumulated micro-batches give the gradient of one batch k times larger (and,
under pmap or a mesh, every device count gives the same update). Mixed precision is the module's
dtype (compute, e.g. bfloat16) against the params' dtype (the master copy the optimizer updates,
float32 by default).

On a model with a LoRA adapter (llama_flax.lora) only the adapter trains: the state's params and
optimizer moments are the adapter's, and the base params travel beside the state, frozen (no
gradient, no optimizer state, never donated; int8/int4 for QLoRA).

    trainer = Trainer(model, TrainConfig(learning_rate=1e-3, total_steps=200))
    state = trainer.init_state()
    state, metrics = trainer.step(state, {"input_ids": ids})       # labels default to input_ids

or in one call: `result = train(model, token_batches(tokens, 8, 128), steps=200)`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from llama_flax import parallel, sharding
from llama_flax.loading import FlaxPreTrainedModel, resolve_dtype
from llama_flax.modeling import REMAT_POLICIES, causal_lm_loss
from llama_flax.scan import stacked_at
from llama_shared import lora
from llama_shared.heads import IGNORE_INDEX, packed_labels

Batch = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule and precision of a training run (AdamW, linear warmup then cosine decay)."""

    learning_rate: float = 3e-4
    warmup_steps: int = 100
    total_steps: int = 10_000  # the cosine schedule reaches final_learning_rate_ratio here
    final_learning_rate_ratio: float = 0.1
    weight_decay: float = 0.1  # on kernels and embeddings; never on norms or biases
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    accumulation_steps: int = 1
    remat_policy: str = "none"  # "none", "full" or "dots_saveable" per decoder layer
    compute_dtype: Any = "float32"  # "bfloat16" for mixed precision
    master_dtype: Any = "float32"  # params and optimizer moments; "bfloat16" keeps no float32 copy
    seed: int = 0  # of the dropout masks (LoRA dropout)

    def __post_init__(self) -> None:
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"TrainConfig.remat_policy {self.remat_policy!r}: expected one of "
                             f"{sorted(REMAT_POLICIES)}")
        if self.accumulation_steps < 1:
            raise ValueError(f"TrainConfig.accumulation_steps must be at least 1, got {self.accumulation_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"TrainConfig.warmup_steps ({self.warmup_steps}) must lie in [0, total_steps "
                             f"({self.total_steps})]")


@flax.struct.dataclass
class TrainState:
    """Everything training resumes from: the step, the params (master copy) and the optimizer state."""

    step: jax.Array
    params: Any
    opt_state: Any


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to learning_rate, then cosine decay to final_learning_rate_ratio of it."""
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                              max(config.total_steps, config.warmup_steps + 1),
                                              config.learning_rate * config.final_learning_rate_ratio)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm gradient clipping, then AdamW on the schedule with decay on matrices only."""
    adamw = optax.adamw(learning_rate_schedule(config), config.b1, config.b2, config.eps,
                        weight_decay=config.weight_decay, mask=decayed)
    if config.max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)


def decayed(params: Any) -> Any:
    """True for the params weight decay applies to: matrices (kernels, embeddings), counted per layer
    so that a scanned layer's stacked norm weights (layers, hidden) stay undecayed."""
    def is_matrix(key_path: tuple, param: Any) -> bool:
        names = tuple(str(getattr(k, "key", k)) for k in key_path)
        return param.ndim - (stacked_at(names) is not None) >= 2

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def init_train_state(params: Any, optimizer: optax.GradientTransformation, master_dtype: Any = jnp.float32,
                     shardings: Any = None) -> TrainState:
    """Step 0, a copy of params in the master dtype, fresh optimizer state; placed as shardings says
    (a tree like the state's, from Trainer.state_shardings) or where the compiler puts it."""
    def init(params: Any) -> TrainState:
        params = jax.tree.map(lambda p: p.astype(master_dtype), params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))

    return jax.jit(init, out_shardings=shardings)(params)


def target_count(labels: jax.Array) -> jax.Array:
    """Number of positions the shifted causal-LM loss scores (labels[:, 1:] that are not ignored)."""
    return jnp.sum(labels[:, 1:] != IGNORE_INDEX)


def complete_batch(batch: Batch) -> dict[str, Any]:
    """Fill in labels on the host: input_ids, with padding (attention_mask 0) ignored; in a packed
    batch (segment_ids) padding and each document's first token are never targets."""
    batch = dict(batch)
    if "labels" not in batch:
        ids, mask = np.asarray(batch["input_ids"]), batch.get("attention_mask")
        batch["labels"] = ids if mask is None else np.where(np.asarray(mask) == 0, IGNORE_INDEX, ids)
    if "segment_ids" in batch:
        batch["labels"] = packed_labels(np.asarray(batch["labels"]), np.asarray(batch["segment_ids"]), np)
    return batch


def make_train_step(module: nn.Module, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    accumulation_steps: int = 1, axis_name: str | None = None, seed: int = 0) -> Callable:
    """A pure step(state, batch, frozen=None) -> (state, metrics) for jax.jit or jax.pmap.

    batch holds input_ids and labels (batch, seq) and optionally attention_mask, or segment_ids and
    position_ids for packed rows (labels already through packed_labels, as complete_batch leaves
    them); it is cut into accumulation_steps micro-batches run one after another. frozen holds params
    the model needs but the step does not train (a LoRA adapter's base). Each micro-batch gets its
    own dropout rng from seed, the step and (under pmap) the device. With axis_name (under pmap), loss
    sums, gradient sums and token counts are summed over that axis before the update.
    """
    def micro_loss(params: Any, frozen: Any, micro: Batch, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        labels, count = micro["labels"], target_count(micro["labels"])
        # a micro-batch without targets would make the mean loss 0/0: score one dummy target instead,
        # which the count of 0 then removes from the sum and from the gradient
        labels = labels.at[0, -1].set(jnp.where(count > 0, labels[0, -1], 0))
        variables = {"params": lora.join_params(frozen, params) if frozen else params}
        logits = module.apply(variables, micro["input_ids"], micro.get("attention_mask"), micro.get("position_ids"),
                              segment_ids=micro.get("segment_ids"), rngs={"dropout": rng}).logits
        return causal_lm_loss(logits, labels) * count, count

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def accumulate(params: Any, frozen: Any, rng: jax.Array, carry: tuple, micro: tuple) -> tuple[tuple, None]:
        grads_sum, loss_sum, count_sum = carry
        index, micro = micro
        (loss, count), grads = grad_fn(params, frozen, micro, jax.random.fold_in(rng, index))
        return (jax.tree.map(jnp.add, grads_sum, grads), loss_sum + loss, count_sum + count), None

    def step(state: TrainState, batch: Batch, frozen: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
        frozen = frozen or {}
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        if accumulation_steps == 1:
            (loss, count), grads = grad_fn(state.params, frozen, batch, rng)
        else:
            micro_batches = jax.tree.map(lambda x: _split_micro_batches(x, accumulation_steps), dict(batch))
            zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32),
                     jnp.zeros((), jnp.int32))
            (grads, loss, count), _ = jax.lax.scan(lambda c, m: accumulate(state.params, frozen, rng, c, m), zeros,
                                                   (jnp.arange(accumulation_steps), micro_batches))
        if axis_name is not None:
            grads, loss, count = jax.lax.psum((grads, loss, count), axis_name)
        grads = jax.tree.map(lambda g: (g.astype(jnp.float32) / count).astype(g.dtype), grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss / count, "grad_norm": optax.tree.norm(grads), "tokens": count,
                   "learning_rate": schedule(state.step)}
        return TrainState(state.step + 1, params, opt_state), metrics

    return step


def _split_micro_batches(x: jax.Array, accumulation_steps: int) -> jax.Array:
    """(batch, ...) -> (accumulation_steps, batch / accumulation_steps, ...), micro-batch j taking rows
    j, j + k, j + 2k, ...: the split keeps each device's rows on that device."""
    if x.shape[0] % accumulation_steps:
        raise ValueError(f"a batch of {x.shape[0]} rows does not split into {accumulation_steps} micro-batches")
    x = x.reshape(x.shape[0] // accumulation_steps, accumulation_steps, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)


# ------------------------------------------------------------------------------------------------
# Orbax checkpoints


def save_train_state(directory: str | os.PathLike, state: TrainState) -> None:
    """Write the whole train state with Orbax, each host its own shards; refuses an existing directory."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory):
        raise FileExistsError(f"{directory} already exists; a train state is never written over another")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, state)
        checkpointer.wait_until_finished()


def restore_train_state(directory: str | os.PathLike, like: TrainState) -> TrainState:
    """Read a train state saved by save_train_state onto the shapes, dtypes and shardings of `like`
    (a state or its jax.eval_shape), each host reading only its shards."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no train state at {directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(directory, abstract)


# ------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """A model's training setup: the module as trained (compute dtype, remat), the optimizer and the
    jitted step, on one device or on a (data, fsdp, tensor) mesh from llama_flax.parallel.

    With a LoRA adapter on the model only the adapter trains; the base params are kept in
    `frozen` (set by init_state) and model_params(state) joins the two again.
    """

    def __init__(self, model: FlaxPreTrainedModel, config: TrainConfig = TrainConfig(), mesh: Any = None):
        self.model, self.config, self.mesh = model, config, mesh
        self.compute_dtype = resolve_dtype(config.compute_dtype, model.config)
        self.master_dtype = resolve_dtype(config.master_dtype, model.config)
        self.module = model.module.clone(dtype=self.compute_dtype, remat_policy=config.remat_policy)
        self.adapter = lora.config_adapter(self.module.config)
        self.schedule = learning_rate_schedule(config)
        self.optimizer = make_optimizer(config)
        self.step_fn = make_train_step(self.module, self.optimizer, self.schedule, config.accumulation_steps,
                                       seed=config.seed)
        self.frozen: Any = {}
        self._step = self._pmap_step = None

    def trainable(self, params: Any) -> tuple[Any, Any]:
        """(the params that train, the frozen rest) of a full param tree: the adapter and its base, or
        everything and nothing."""
        return lora.split_adapter(params) if self.adapter is not None else (params, {})

    def init_state(self, params: Any = None) -> TrainState:
        """A fresh state from params (the model's by default), sharded over the mesh if there is one;
        the frozen part of params goes to self.frozen."""
        params, frozen = self.trainable(self.model.params if params is None else params)
        if self.mesh is None:
            self.frozen = frozen
            return init_train_state(params, self.optimizer, self.master_dtype)
        self.frozen = parallel.shard_params(frozen, self.mesh)
        abstract = jax.eval_shape(lambda p: init_train_state(p, self.optimizer, self.master_dtype), params)
        with jax.set_mesh(self.mesh):
            return init_train_state(parallel.shard_params(params, self.mesh), self.optimizer, self.master_dtype,
                                    self.state_shardings(abstract))

    def model_params(self, state: TrainState) -> Any:
        """The model's full param tree after training: the state's params with the frozen ones."""
        return lora.join_params(self.frozen, state.params) if self.frozen else state.params

    def state_shardings(self, state: TrainState) -> Any:
        """Each leaf of a train state on the mesh: params and their moments as the rule table says."""
        return sharding.tree_shardings(state, sharding.param_shardings(state.params, self.mesh), self.mesh)

    def step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer step on a batch (input_ids; optional labels, attention_mask, or segment_ids and
        position_ids of packed rows); donates state."""
        batch = complete_batch(batch)
        if self._step is None:
            if self.mesh is None:
                self._step = jax.jit(self.step_fn, donate_argnums=0)
            else:
                self._step = parallel.jit_train_step(self.step_fn, self.mesh, self.state_shardings(state),
                                                     sharding.param_shardings(self.frozen, self.mesh))
        return self._step(state, batch, self.frozen)

    def pmap_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        """The same step, data-parallel under jax.pmap over the local devices (each takes an equal
        slice of the batch; accumulation_steps then applies to each slice)."""
        if self._pmap_step is None:
            step = make_train_step(self.module, self.optimizer, self.schedule, self.config.accumulation_steps,
                                   axis_name=parallel.DATA_AXIS_NAME, seed=self.config.seed)
            self._pmap_step = parallel.pmap_train_step(step)
        devices = jax.local_device_count()
        return self._pmap_step(state, {name: parallel.split_for_pmap(value, devices)
                                       for name, value in complete_batch(batch).items()}, self.frozen)

    def save(self, directory: str | os.PathLike, state: TrainState) -> None:
        save_train_state(directory, state)

    def restore(self, directory: str | os.PathLike, like: TrainState | None = None) -> TrainState:
        """Restore onto the shardings of `like` (by default a fresh state's)."""
        return restore_train_state(directory, self.init_state() if like is None else like)

    def fit(self, state: TrainState, batches: Iterable[Batch | np.ndarray], steps: int,
            on_step: Callable[[int, dict[str, float]], None] | None = None) -> tuple[TrainState, list[float]]:
        """Run `steps` steps from state on batches (dicts, or arrays of input_ids); the state and each loss.

        on_step(step, metrics) sees loss, grad_norm, tokens, learning_rate and tokens_per_second
        (input tokens over the step's wall time, the first step's compile included).
        """
        losses = []
        iterator = iter(batches)
        for _ in range(steps):
            batch = next(iterator)
            batch = batch if isinstance(batch, Mapping) else {"input_ids": batch}
            start = time.perf_counter()
            state, metrics = self.step(state, batch)
            metrics = {name: float(value) for name, value in jax.device_get(metrics).items()}
            metrics["tokens_per_second"] = np.size(batch["input_ids"]) / (time.perf_counter() - start)
            losses.append(metrics["loss"])
            if on_step is not None:
                on_step(int(state.step), metrics)
        return state, losses


@dataclasses.dataclass
class TrainResult:
    params: Any
    losses: list[float]
    state: TrainState


def train(model: FlaxPreTrainedModel, batches: Iterable[Batch | np.ndarray], steps: int,
          config: TrainConfig | None = None, mesh: Any = None,
          on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train model for `steps` optimizer steps on batches (dicts, or arrays of input_ids) and return
    the trained params (also set on the model), the loss of every step and the final state.

    The default config warms up over the first tenth of the steps and decays to the end.
    """
    config = config or TrainConfig(total_steps=steps, warmup_steps=min(100, steps // 10))
    trainer = Trainer(model, config, mesh)
    state, losses = trainer.fit(trainer.init_state(), batches, steps, on_step)
    model.params = trainer.model_params(state)
    return TrainResult(state.params, losses, state)


def token_batches(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Endless random windows of seq_len tokens from one long token stream, batch_size at a time."""
    tokens = np.asarray(tokens, np.int32)
    if tokens.size < seq_len + 1:
        raise ValueError(f"{tokens.size} tokens are too few for windows of {seq_len}")
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, tokens.size - seq_len + 1, batch_size)
        yield {"input_ids": np.stack([tokens[s:s + seq_len] for s in starts])}
