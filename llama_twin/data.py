"""Packed training batches from text or JSONL files: read documents, tokenize, add EOS, cut
documents longer than a row into row-sized pieces, shuffle, shard per host, pack several documents
into each row (first fit), batch.

A batch is a dict of (batch, seq_len) int32 arrays: input_ids, segment_ids (1, 2, ... for the
documents of a row, 0 for padding after the last) and position_ids (restarting at 0 in each
document), which Trainer.step and both twins' forward take as they are.

grain (Google's data loader for JAX) does the work after tokenizing: its MapDataset shuffles and
shards, FirstFitPackIterDataset packs with these same segment-id and position conventions, and its
iterators can be checkpointed and prefetched in worker processes; tokenizing is ours
(llama_shared's tokenizers).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from llama_shared.errors import InputError


def read_documents(paths: Sequence[str | os.PathLike], text_field: str = "text") -> list[str]:
    """The documents of text files (separated by blank lines) and JSONL files (one per line, its
    text_field), in the order given."""
    documents = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            if str(path).endswith((".jsonl", ".json")):
                for number, line in enumerate(f, 1):
                    if line.strip():
                        record = json.loads(line)
                        if text_field not in record:
                            raise InputError(f"{path}:{number} has no field {text_field!r}")
                        documents.append(record[text_field])
            else:
                documents += [part.strip() for part in f.read().split("\n\n") if part.strip()]
    return documents


class _Tokenize(grain.transforms.Map):
    """Text -> int32 ids with the tokenizer's BOS (as it adds it) and an EOS appended."""

    def __init__(self, tokenizer: Any, add_eos: bool):
        self.tokenizer, self.add_eos = tokenizer, add_eos

    def map(self, text: str) -> np.ndarray:
        ids = list(self.tokenizer.encode(text))
        if self.add_eos and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return np.asarray(ids, np.int32)


class _Pieces(grain.experimental.FlatMapTransform):
    """A document cut into pieces of at most seq_len tokens, each a packing input."""

    def __init__(self, seq_len: int, max_fan_out: int):
        self.seq_len, self.max_fan_out = seq_len, max_fan_out

    def flat_map(self, ids: np.ndarray) -> list[dict[str, np.ndarray]]:
        pieces = [ids[start:start + self.seq_len] for start in range(0, len(ids), self.seq_len)]
        if len(pieces) > self.max_fan_out:
            raise InputError(f"a document of {len(ids)} tokens makes more than max_pieces={self.max_fan_out} "
                             f"rows of {self.seq_len}")
        return [{"input_ids": piece} for piece in pieces]


def packed_dataset(documents: Sequence[str], tokenizer: Any, seq_len: int, batch_size: int, seed: int = 0,
                   shard_index: int = 0, shard_count: int = 1, epochs: int | None = None, add_eos: bool = True,
                   max_pieces: int = 4096) -> grain.IterDataset:
    """The grain pipeline: documents shuffled (per epoch; epochs None repeats forever), this shard's
    share (documents shard_index, shard_index + shard_count, ...), tokenized, cut to seq_len and
    packed first-fit into batches of batch_size rows."""
    if seq_len < 1:
        raise InputError(f"seq_len (the packing length) must be at least one token, got {seq_len}")
    if not 0 <= shard_index < shard_count:
        raise InputError(f"shard_index {shard_index} is not in [0, shard_count={shard_count})")
    dataset = grain.MapDataset.source(list(documents))[shard_index::shard_count]
    if len(dataset) == 0:
        raise InputError(f"shard {shard_index} of {shard_count} holds no documents ({len(documents)} in all)")
    dataset = dataset.shuffle(seed=seed).repeat(epochs).map(_Tokenize(tokenizer, add_eos))
    pieces = grain.experimental.FlatMapIterDataset(dataset.to_iter_dataset(), _Pieces(seq_len, max_pieces))
    packed = grain.experimental.FirstFitPackIterDataset(pieces, length_struct={"input_ids": seq_len},
                                                        num_packing_bins=batch_size, seed=seed)
    return packed.batch(batch_size, drop_remainder=True)


def packed_batches(paths: Sequence[str | os.PathLike], tokenizer: Any, seq_len: int, batch_size: int,
                   seed: int = 0, shard_index: int | None = None, shard_count: int | None = None,
                   epochs: int | None = None, text_field: str = "text", add_eos: bool = True) -> Iterator[dict]:
    """Packed batches of the files' documents for Trainer.step / Trainer.fit (input_ids,
    segment_ids, position_ids). Shards default to this host's: jax.process_index() of
    jax.process_count() when jax is loaded, else the one shard."""
    if shard_index is None or shard_count is None:
        shard_index, shard_count = _host_shard()
    dataset = packed_dataset(read_documents(paths, text_field), tokenizer, seq_len, batch_size, seed,
                             shard_index, shard_count, epochs, add_eos)
    for batch in dataset:
        yield {"input_ids": batch["input_ids"].astype(np.int32),
               "segment_ids": batch["input_ids_segment_ids"].astype(np.int32),
               "position_ids": batch["input_ids_positions"].astype(np.int32)}


def _host_shard() -> tuple[int, int]:
    import sys

    jax = sys.modules.get("jax")
    if jax is None:
        return 0, 1
    return jax.process_index(), jax.process_count()
