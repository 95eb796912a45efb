"""Meta's original checkpoints (params.json + consolidated.NN.pth + tokenizer.model) to and from
Hugging Face tensors.

Reading merges the model-parallel files along fairscale's split dimensions
(naming.META_SPLIT_DIMS) and permutes q/k rows from Meta's interleaved RoPE pairs to rotate_half
(k with num_key_value_heads), one layer at a time. Each file is first opened with
torch.load(weights_only=True, mmap=True) for its names, shapes and layout; tensors stored whole in
records of their own (what torch.save writes) are then read straight from their records, others
copied out of the memory map, reopened for each layer. Writing
lays out each consolidated.NN.pth with torch.save's own format, storage space reserved
(torch.serialization.skip_data), then fills every tensor's record in place as it arrives. Both
directions keep the page cache to about a layer (llama_shared.checkpoints.pagecache).
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np
import torch

from llama_shared.checkpoints.pagecache import WriteBehind, drop_cached_file, read_tensor
from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError, ConfigError, ConversionError
from llama_shared.files import open_regular, read_json
from llama_shared.naming import (LLAMA3_MIN_VOCAB, hf_key_from_meta, interleaved_from_rotate_half, is_ignored_key,
                                 meta_key, meta_split_dim, rotary_rows_heads, rotate_half_from_interleaved)
from llama_shared.parameters import model_tensors
from llama_twin.conversion.formats.base import Format, WriteOptions
from llama_twin.conversion.source import TensorSource, carried_files, write_side_files

PARAMS_FILE = "params.json"
TOKENIZER_FILE = "tokenizer.model"
SHARD_NAME = re.compile(r"^consolidated\.(\d+)\.pth$")
LAYER_MODULES = ("attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1",
                 "feed_forward.w2", "feed_forward.w3", "attention_norm", "ffn_norm")
# Llama 3.1 and 3.2 RoPE scaling (use_scaled_rope): Meta's constants; the factor is 8, and 32 for
# the tied 3.2 models, as transformers' converter writes.
LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
# The generation defaults Meta ships and transformers' converter writes.
GENERATION_DEFAULTS = {"do_sample": True, "temperature": 0.6, "top_p": 0.9}
# (multiple_of, ffn_dim_multiplier) pairs Meta's params.json files use, tried first when writing one.
META_FFN_CHOICES = ((256, None), (1024, 1.3), (4096, 1.3), (256, 1.5), (256, 1.0), (4096, 1.2), (4096, None))


def is_meta_checkpoint(path: str) -> bool:
    """True for a folder with params.json or consolidated.NN.pth files."""
    return os.path.exists(os.path.join(path, PARAMS_FILE)) or any(SHARD_NAME.match(n) for n in os.listdir(path))


def ffn_hidden_size(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's FeedForward width: 2/3 of 4*dim, times the multiplier, rounded up to multiple_of."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


# ------------------------------------------------------------------------------------------------
# params.json <-> LlamaConfig


# params.json fields: (kind, whether they may be absent or null); "count" is a positive integer,
# "real" a finite positive number, "flag" a boolean; vocab_size may be -1 (the tokenizer decides).
PARAMS_FIELDS = {"dim": ("count", False), "n_layers": ("count", False), "n_heads": ("count", False),
                 "n_kv_heads": ("count", True), "multiple_of": ("count", True), "ffn_dim_multiplier": ("real", True),
                 "norm_eps": ("real", True), "rope_theta": ("real", True), "use_scaled_rope": ("flag", True),
                 "rope_scaling_factor": ("real", True), "vocab_size": ("int", True)}


def checked_params(params: Any, path: str) -> dict[str, Any]:
    """params.json with the type and range of every field the converter reads checked."""
    if not isinstance(params, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(params).__name__}")
    for name, (kind, nullable) in PARAMS_FIELDS.items():
        value = params.get(name)
        if value is None and nullable:
            continue
        integer = isinstance(value, int) and not isinstance(value, bool)
        good = {"count": integer and value > 0, "int": integer,
                "real": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and value > 0, "flag": isinstance(value, bool)}[kind]
        if not good:
            wanted = {"count": "a positive integer", "int": "an integer", "real": "a finite positive number",
                      "flag": "true or false"}[kind]
            raise CheckpointError(f"{path}: field {name!r} must be {wanted}, got {value!r}")
    return params


def config_from_params(params: dict[str, Any], vocab_size: int, tied: bool, path: str) -> LlamaConfig:
    """The Hugging Face config of a Meta model, as transformers' converter derives it.

    The Llama generation is read from the file: Llama 3 has a 128256-token vocabulary, 3.1 and 3.2
    set use_scaled_rope (3.2 is the tied one), Llama 1 has norm_eps 1e-6 and Llama 2 1e-5.
    """
    dim, heads = params["dim"], params["n_heads"]
    llama3 = vocab_size >= LLAMA3_MIN_VOCAB
    norm_eps = params.get("norm_eps") or 1e-5
    rope_scaling = None
    if params.get("use_scaled_rope"):
        factor = params.get("rope_scaling_factor") or (32.0 if tied else 8.0)
        rope_scaling = {"rope_type": "llama3", "factor": float(factor), **LLAMA3_ROPE}
        max_positions = 131072
    else:
        max_positions = 8192 if llama3 else 2048 if norm_eps <= 1e-6 else 4096
    try:
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=dim, num_hidden_layers=params["n_layers"], num_attention_heads=heads,
            num_key_value_heads=params.get("n_kv_heads") or heads,
            intermediate_size=ffn_hidden_size(dim, params.get("multiple_of") or 256, params.get("ffn_dim_multiplier")),
            rms_norm_eps=norm_eps, rope_theta=float(params.get("rope_theta") or 10000.0), rope_scaling=rope_scaling,
            max_position_embeddings=max_positions, tie_word_embeddings=tied,
            bos_token_id=128000 if llama3 else 1, eos_token_id=128001 if llama3 else 2, pad_token_id=None)
    except ConfigError as e:
        raise CheckpointError(f"{path} describes no valid model: {e}") from None


def params_from_config(config: LlamaConfig) -> dict[str, Any]:
    """params.json for a Hugging Face config; CheckpointError for a model Meta's code cannot express."""
    c = config
    unsupported = [name for name, bad in (
        ("attention_bias", c.attention_bias), ("mlp_bias", c.mlp_bias),
        ("hidden_act (Meta uses silu)", c.hidden_act != "silu"),
        ("head_dim (Meta uses hidden_size // num_attention_heads)",
         c.head_dim != c.hidden_size // c.num_attention_heads),
        (f"rope_type {c.rope_type!r} (Meta has default and llama3)", c.rope_type not in ("default", "llama3")))
        if bad]
    if c.rope_type == "llama3" and any(c.rope_scaling[k] != v for k, v in LLAMA3_ROPE.items()):
        unsupported.append(f"rope_scaling {c.rope_scaling} (Meta's llama3 scaling fixes {LLAMA3_ROPE})")
    if unsupported:
        raise ConversionError(f"Meta's checkpoint format cannot express this model's {', '.join(unsupported)}")
    multiple_of, multiplier = meta_ffn_params(c.hidden_size, c.intermediate_size)
    params: dict[str, Any] = {"dim": c.hidden_size, "n_layers": c.num_hidden_layers, "n_heads": c.num_attention_heads}
    if c.num_key_value_heads != c.num_attention_heads:
        params["n_kv_heads"] = c.num_key_value_heads
    params.update(vocab_size=c.vocab_size, multiple_of=multiple_of, norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta)
    if multiplier is not None:
        params["ffn_dim_multiplier"] = multiplier
    if c.rope_type == "llama3":
        params.update(use_scaled_rope=True, rope_scaling_factor=c.rope_scaling["factor"])
    return params


def meta_ffn_params(dim: int, intermediate_size: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) giving intermediate_size: one Meta uses if any fits, else exact ones."""
    for multiple_of, multiplier in META_FFN_CHOICES:
        if ffn_hidden_size(dim, multiple_of, multiplier) == intermediate_size:
            return multiple_of, multiplier
    multiplier = intermediate_size / int(2 * 4 * dim / 3)
    if ffn_hidden_size(dim, intermediate_size, multiplier) != intermediate_size:
        raise ConversionError(f"no multiple_of / ffn_dim_multiplier gives intermediate_size {intermediate_size} "
                              f"for dim {dim}")
    return intermediate_size, multiplier


# ------------------------------------------------------------------------------------------------
# Reading


class MetaCheckpoint:
    """The model-parallel files of a Meta checkpoint folder, read one group of tensors at a time."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        params_path = os.path.join(self.directory, PARAMS_FILE)
        if not os.path.exists(params_path):
            raise CheckpointError(f"{self.directory} has no {PARAMS_FILE}; a Meta checkpoint needs it beside "
                                  f"its consolidated.NN.pth files")
        self.params: dict[str, Any] = checked_params(read_json(params_path, CheckpointError), params_path)
        ranks = sorted((int(m.group(1)), name) for name in os.listdir(self.directory) if (m := SHARD_NAME.match(name)))
        if not ranks:
            raise CheckpointError(f"{self.directory} has {PARAMS_FILE} but no consolidated.NN.pth files")
        if [r for r, _ in ranks] != list(range(len(ranks))):
            raise CheckpointError(f"{self.directory}: model-parallel files must be numbered consecutively from 00; "
                                  f"found {', '.join(n for _, n in ranks)}")
        self.paths = [os.path.join(self.directory, name) for _, name in ranks]
        self.shapes: list[dict[str, tuple[tuple[int, ...], np.dtype]]] = []
        self._offsets: list[dict[str, int] | None] = []
        for rank, path in enumerate(self.paths):
            state = {k: t for k, t in self.load(rank).items() if not is_ignored_key(k)}
            self.shapes.append({k: (tuple(t.shape), _numpy_dtype(t)) for k, t in state.items()})
            contiguous = all(t.is_contiguous() for t in state.values())
            self._offsets.append(_stored_offsets(path, self.shapes[-1]) if contiguous else None)
        if any(s.keys() != self.shapes[0].keys() for s in self.shapes):
            raise CheckpointError(f"{self.directory}: the consolidated.NN.pth files hold different tensor names")

    def __len__(self) -> int:
        return len(self.paths)

    def pieces(self, keys: list[str]) -> Iterator[tuple[str, list[np.ndarray]]]:
        """Each key's pieces, one new array per file, leaving none of their pages in the page cache.

        Where every file stores each tensor whole in a record of its own (as torch.save does), the
        pieces are read straight into their arrays and dropped behind (large reads instead of copying
        out of a memory map page fault by page fault); otherwise they are copied out of
        torch.load's memory map."""
        if all(offsets is not None for offsets in self._offsets):
            for key in keys:
                yield key, [self._read(rank, key) for rank in range(len(self))]
            return
        states = [self.load(rank) for rank in range(len(self))]
        for key in keys:
            yield key, [np.array(_to_numpy(state[key])) for state in states]
        del states  # unmapped, so that the group's pages can leave the page cache
        for path in self.paths:
            drop_cached_file(path)

    def _read(self, rank: int, key: str) -> np.ndarray:
        return read_tensor(self.paths[rank], self._offsets[rank][key], *self.shapes[rank][key], key)

    def load(self, rank: int) -> dict[str, Any]:
        """One file's state dict, memory-mapped: its pages are resident only while it is referenced."""
        path = self.paths[rank]
        open_regular(path, CheckpointError).close()  # a FIFO or device would block or never end
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, pickle errors, EOFError...
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
        return state


def meta_source(path: str | os.PathLike) -> TensorSource:
    """A Meta checkpoint folder as Hugging Face tensors, merged and permuted one layer at a time."""
    checkpoint = MetaCheckpoint(path)
    params, n_files = checkpoint.params, len(checkpoint)
    first = checkpoint.shapes[0]
    if "tok_embeddings.weight" not in first:
        raise CheckpointError(f"{checkpoint.paths[0]} has no tensor 'tok_embeddings.weight'")
    _check_file_count(checkpoint)
    embedding_dim = _embedding_split_dim(checkpoint)
    merged = {k: _merged_shape(checkpoint, k, embedding_dim) for k in first}
    vocab_size = merged["tok_embeddings.weight"][0]
    if params.get("vocab_size", -1) > 0 and params["vocab_size"] != vocab_size:
        raise CheckpointError(f"{checkpoint.directory}: {PARAMS_FILE} gives vocab_size {params['vocab_size']} but "
                              f"tok_embeddings.weight has {vocab_size} rows")
    tied = "output.weight" not in first or _output_is_embedding(checkpoint, embedding_dim, merged)
    config = config_from_params(params, vocab_size, tied, os.path.join(checkpoint.directory, PARAMS_FILE))
    expected = expected_meta_shapes(config)
    _check_shapes(checkpoint, merged, expected, n_files)
    groups = [["tok_embeddings.weight"]]
    groups += [[f"layers.{i}.{m}.weight" for m in LAYER_MODULES] for i in range(config.num_hidden_layers)]
    groups += [["norm.weight"] + ([] if tied else ["output.weight"])]
    dtypes = {k: d for k, (_, d) in first.items()}
    specs = {hf_key_from_meta(k): (expected[k], dtypes[k]) for group in groups for k in group}

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        for group in groups:
            for key, pieces in checkpoint.pieces(group):
                dim = embedding_dim if key == "tok_embeddings.weight" else meta_split_dim(key, vocab_size)
                array = np.concatenate(pieces, axis=dim) if dim is not None and n_files > 1 else pieces[0]
                yield hf_key_from_meta(key), _to_rotate_half(key, array, config)

    files = carried_files(checkpoint.directory, (TOKENIZER_FILE,))
    generation = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id, **GENERATION_DEFAULTS}
    return TensorSource(config, specs, tensors, files, {"generation_config.json": generation})


def expected_meta_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """The full (merged) shape of every Meta tensor of a config; output.weight is listed for tied
    models too, which Meta stores as a copy of the embedding."""
    shapes = {meta_key(key): spec.shape for key, spec in model_tensors(config).items()}
    shapes["output.weight"] = (config.vocab_size, config.hidden_size)
    return shapes


def _check_file_count(checkpoint: MetaCheckpoint) -> None:
    """The number of files must be the one the query heads are split over (whole heads per file)."""
    params, key = checkpoint.params, "layers.0.attention.wq.weight"
    if key not in checkpoint.shapes[0] or not params.get("n_heads") or not params.get("dim"):
        return
    rows = checkpoint.shapes[0][key][0][0]
    total = params["dim"] // params["n_heads"] * params["n_heads"]
    if rows and total % rows == 0 and total // rows != len(checkpoint):
        raise CheckpointError(f"{checkpoint.directory} has {len(checkpoint)} consolidated.NN.pth files, but {key} in "
                              f"{os.path.basename(checkpoint.paths[0])} has {rows} rows of the {total} that "
                              f"{PARAMS_FILE} implies: {total // rows} model-parallel files")


def _embedding_split_dim(checkpoint: MetaCheckpoint) -> int:
    """0 (Llama 3, VocabParallelEmbedding) or 1 (Llama 1/2, ParallelEmbedding), told from the shapes."""
    rows, width = checkpoint.shapes[0]["tok_embeddings.weight"][0]
    n_files, dim = len(checkpoint), checkpoint.params.get("dim")
    if n_files == 1 or width == dim:
        return 0
    if width * n_files == dim:
        return 1
    raise CheckpointError(f"{checkpoint.paths[0]}: tok_embeddings.weight has shape {(rows, width)}, which fits "
                          f"neither split of dim {dim} over {n_files} model-parallel files")


def _merged_shape(checkpoint: MetaCheckpoint, key: str, embedding_dim: int) -> tuple[int, ...]:
    shapes = [s[key][0] for s in checkpoint.shapes]
    dim = embedding_dim if key == "tok_embeddings.weight" else meta_split_dim(key, 0)
    if dim is None or len(shapes) == 1:
        return shapes[0]
    merged = list(shapes[0])
    merged[dim] = sum(s[dim] for s in shapes)
    return tuple(merged)


def _check_shapes(checkpoint: MetaCheckpoint, merged: dict[str, tuple[int, ...]],
                  expected: dict[str, tuple[int, ...]], n_files: int) -> None:
    """Every tensor params.json implies is present with its shape, and nothing else is."""
    unknown = sorted(set(merged) - set(expected))
    if unknown:
        raise CheckpointError(f"{checkpoint.paths[0]} holds {unknown[0]!r}, which {PARAMS_FILE} does not describe "
                              f"(n_layers {checkpoint.params.get('n_layers')})")
    for key, shape in expected.items():
        if key == "output.weight" and key not in merged:
            continue
        if key not in merged:
            raise CheckpointError(f"tensor {key!r} is missing from {checkpoint.directory}")
        if merged[key] != shape:
            raise CheckpointError(f"tensor {key!r} merged from {n_files} file(s) in {checkpoint.directory} has "
                                  f"shape {merged[key]}, but {PARAMS_FILE} implies {shape}")


def _output_is_embedding(checkpoint: MetaCheckpoint, embedding_dim: int, merged: dict[str, tuple[int, ...]],
                         block: int = 4096) -> bool:
    """True when output.weight equals tok_embeddings.weight (Llama 3.2's tied copy), compared in row blocks."""
    if merged["output.weight"] != merged["tok_embeddings.weight"]:
        return False
    states = [checkpoint.load(rank) for rank in range(len(checkpoint))]
    embedding = [_to_numpy(s["tok_embeddings.weight"]) for s in states]
    output = [_to_numpy(s["output.weight"]) for s in states]
    for start in range(0, merged["output.weight"][0], block):
        rows = _merged_rows(embedding, embedding_dim, start, start + block)
        if not np.array_equal(_bits(rows), _bits(_merged_rows(output, 0, start, start + block))):
            return False
    return True


def _bits(array: np.ndarray) -> np.ndarray:
    """The array's bit patterns as unsigned integers: a copy is bit-identical, and integer equality
    is faster than bfloat16's (and treats NaN and -0.0 as the bits they are)."""
    return array.view(f"u{array.dtype.itemsize}")


def _merged_rows(pieces: list[np.ndarray], axis: int, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the tensor that pieces merge into along axis, without merging the rest
    (a view, not a copy, when the rows lie in one piece)."""
    if axis == 1:
        rows = [p[start:stop] for p in pieces]
    else:
        rows, offset = [], 0
        for piece in pieces:
            low, high = max(start - offset, 0), min(stop - offset, piece.shape[0])
            if low < high:
                rows.append(piece[low:high])
            offset += piece.shape[0]
    return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=axis)


def _to_rotate_half(key: str, array: np.ndarray, config: LlamaConfig) -> np.ndarray:
    heads = rotary_rows_heads(key, config.num_attention_heads, config.num_key_value_heads)
    return array if heads is None else rotate_half_from_interleaved(array, heads)


def _to_numpy(tensor: Any) -> np.ndarray:
    """A numpy view of a CPU tensor; bfloat16 as ml_dtypes.bfloat16."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _numpy_dtype(tensor: Any) -> np.dtype:
    return _to_numpy(tensor.reshape(-1)[:0]).dtype


# ------------------------------------------------------------------------------------------------
# Writing


def write_meta(source: TensorSource, directory: str, options: WriteOptions) -> None:
    """Write params.json, consolidated.00.pth ... (options.num_shards model-parallel files, split as
    fairscale does) and tokenizer.model, filling each tensor's record in place as the source yields it."""
    num_shards = options.num_shards
    if not hasattr(torch.serialization, "skip_data"):
        raise ConversionError(f"writing Meta checkpoints needs torch >= 2.5 (torch.serialization.skip_data); "
                              f"this is torch {torch.__version__}")
    config = source.config
    params = params_from_config(config)
    expected = expected_meta_shapes(config)
    specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for key, (shape, dtype) in source.specs.items():
        meta = meta_key(key)
        if meta not in expected:
            raise CheckpointError(f"tensor {key!r} has no counterpart in Meta's checkpoint layout")
        if tuple(shape) != expected[meta]:
            raise CheckpointError(f"tensor {key!r} has shape {tuple(shape)}, but the config implies {expected[meta]}")
        specs[meta] = (tuple(shape), dtype)
    if config.tie_word_embeddings:
        specs["output.weight"] = specs["tok_embeddings.weight"]
    missing = sorted(set(expected) - set(specs))
    if missing:
        raise CheckpointError(f"the source has no tensor for Meta's {missing[0]!r}")
    vocab = config.vocab_size
    for key, (shape, _) in specs.items():
        dim = meta_split_dim(key, vocab)
        if dim is not None and shape[dim] % num_shards:
            raise ConversionError(f"cannot split {key} of shape {shape} into {num_shards} model-parallel files "
                                  f"along dimension {dim}")
    if config.num_key_value_heads % num_shards:
        raise ConversionError(f"num_key_value_heads {config.num_key_value_heads} is not divisible by {num_shards} "
                              f"model-parallel files (each file holds whole key/value heads)")
    paths = [os.path.join(directory, f"consolidated.{rank:02d}.pth") for rank in range(num_shards)]
    offsets = [_reserve_pth(path, _shard_specs(specs, rank, num_shards, vocab)) for rank, path in enumerate(paths)]
    written: set[str] = set()
    files = [open(path, "r+b", buffering=0) for path in paths]
    try:
        writers = [WriteBehind(f, path) for f, path in zip(files, paths)]
        for key, array in source.tensors():
            meta = meta_key(key)
            array = _to_interleaved(meta, array, config)
            tied_copy = config.tie_word_embeddings and meta == "tok_embeddings.weight"
            targets = [meta, "output.weight"] if tied_copy else [meta]
            for target in targets:
                dim = meta_split_dim(target, vocab)
                pieces = np.split(array, num_shards, axis=dim) if dim is not None else [array] * num_shards
                for writer, piece, rank_offsets in zip(writers, pieces, offsets):
                    data = memoryview(np.ascontiguousarray(piece).reshape(-1).view(np.uint8))
                    writer.write(rank_offsets[target], data)
                written.add(target)
        for writer in writers:
            writer.finish()
    finally:
        for f in files:
            f.close()
    if written != set(specs):
        raise CheckpointError(f"the source yielded no tensor for {sorted(set(specs) - written)[0]!r}")
    with open(os.path.join(directory, PARAMS_FILE), "w", encoding="utf-8") as f:
        json.dump(params, f, indent=2)
        f.write("\n")
    write_side_files(source, directory, (TOKENIZER_FILE,))


def _to_interleaved(key: str, array: np.ndarray, config: LlamaConfig) -> np.ndarray:
    heads = rotary_rows_heads(key, config.num_attention_heads, config.num_key_value_heads)
    return array if heads is None else interleaved_from_rotate_half(array, heads)


def _shard_specs(specs: dict[str, tuple[tuple[int, ...], np.dtype]], rank: int, num_shards: int,
                 vocab: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    out = {}
    for key, (shape, dtype) in specs.items():
        dim = meta_split_dim(key, vocab)
        out[key] = (tuple(n // num_shards if d == dim else n for d, n in enumerate(shape)), dtype)
    return out


def _reserve_pth(path: str, specs: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, int]:
    """Write a torch.save file of these tensors with their storage left unwritten; return each tensor's
    byte offset in the file.

    The tensors are plain torch.empty: address space only, as skip_data writes none of their bytes
    and nothing touches their pages. FakeTensorMode tensors would do as well, but importing it
    imports torch._dynamo (seconds); they are the fallback where the system refuses the address space
    (vm.overcommit_memory=2)."""
    def empty() -> dict[str, Any]:
        return {k: torch.empty(shape, dtype=_torch_dtype(dtype)) for k, (shape, dtype) in specs.items()}

    try:
        state, fake = empty(), False
    except RuntimeError:
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode():
            state, fake = empty(), True
    with torch.serialization.skip_data(materialize_fake_tensors=fake):
        try:
            torch.save(state, path)
        except RuntimeError as e:  # torch reports a failed write (a full disk) in C++'s words
            raise ConversionError(f"could not write {path} (is the disk full?): {e}") from None
    return _record_offsets(path, specs)


def _torch_dtype(dtype: np.dtype) -> Any:
    if dtype == ml_dtypes.bfloat16:
        return torch.bfloat16
    return getattr(torch, np.dtype(dtype).name)


class _StorageKeys(pickle.Unpickler):
    """Reads a torch.save data.pkl into {tensor name: (storage record, element offset)}, allowing no
    global beyond the tensor rebuild function (a file torch.load(weights_only=True) has read already)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, *rest: (storage, offset)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in a state dict of plain tensors")

    def persistent_load(self, pid: Any) -> str:
        return pid[2]


def _stored_offsets(path: str, specs: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, int] | None:
    """Each tensor's byte offset in a torch.save file, or None where some tensor is not stored whole,
    uncompressed, in a record of its own (a view of a larger storage, say)."""
    try:
        return _record_offsets(path, specs)
    except (CheckpointError, pickle.UnpicklingError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _record_offsets(path: str, specs: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, int]:
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        prefix = archive.namelist()[0].split("/")[0]
        records = _StorageKeys(io.BytesIO(archive.read(f"{prefix}/data.pkl"))).load()
        offsets = {}
        for key, (shape, dtype) in specs.items():
            record, element_offset = records[key]
            info = archive.getinfo(f"{prefix}/data/{record}")
            if (element_offset or info.compress_type != zipfile.ZIP_STORED
                    or info.file_size != math.prod(shape) * np.dtype(dtype).itemsize):
                raise CheckpointError(f"{path}: torch.save laid out {key!r} unexpectedly")
            f.seek(info.header_offset)
            name_len, extra_len = struct.unpack("<HH", f.read(30)[26:30])
            offsets[key] = info.header_offset + 30 + name_len + extra_len
    return offsets


FORMAT = Format("meta", f"{PARAMS_FILE} with consolidated.NN.pth", is_meta_checkpoint, meta_source, write_meta)
