"""llama_twin.data: documents from text and JSONL files, tokenized with EOS, cut to the row length,
shuffled, sharded per host and packed by grain into rows whose segment ids and positions the twins
take; a packing length under one token is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("grain")

from llama_shared.errors import InputError  # noqa: E402
from llama_shared.tokenizers import AutoTokenizer  # noqa: E402
from llama_twin import demo_model_dir  # noqa: E402
from llama_twin.data import packed_batches, read_documents  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(demo_model_dir())


@pytest.fixture()
def corpus(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("\n\n".join(f"Document {i}: " + "and the earth " * (i % 7) for i in range(12)))
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"Record {i} " + "light " * i, "id": i}) + "\n" for i in range(8)))
    return [text, jsonl]


def test_documents_come_from_blank_line_separated_text_and_jsonl(corpus):
    documents = read_documents(corpus)
    assert len(documents) == 20
    assert documents[0] == "Document 0:" and documents[12] == "Record 0 "


def test_a_jsonl_record_without_the_field_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2 has no field 'text'"):
        read_documents([path])


def test_one_epoch_packs_every_token_once_with_restarting_positions(corpus, tokenizer):
    documents = read_documents(corpus)
    expected = sorted(tuple(tokenizer.encode(d)) + (tokenizer.eos_token_id,) for d in documents)
    batches = list(packed_batches(corpus, tokenizer, seq_len=24, batch_size=2, epochs=1, shard_index=0,
                                  shard_count=1))
    found = []
    for batch in batches:
        assert {name: a.shape for name, a in batch.items()} == {n: (2, 24) for n in
                                                                ("input_ids", "segment_ids", "position_ids")}
        for ids, segments, positions in zip(batch["input_ids"], batch["segment_ids"], batch["position_ids"]):
            for segment in set(segments.tolist()) - {0}:
                where = np.flatnonzero(segments == segment)
                assert positions[where].tolist() == list(range(len(where)))
                found.append(tuple(ids[where].tolist()))
    # documents longer than a row come back in row-sized pieces: compare the token multiset per document
    pieces = sorted(found)
    whole = sorted(piece for document in expected for piece in
                   (document[i:i + 24] for i in range(0, len(document), 24)))
    assert len(pieces) <= len(whole) and set(pieces) <= set(whole)
    assert sum(map(len, pieces)) >= sum(map(len, whole)) - 2 * 24   # the last, incomplete batch is dropped


def test_hosts_read_disjoint_shards_that_cover_the_corpus(corpus, tokenizer):
    seen = []
    for shard in range(2):
        batches = packed_batches(corpus, tokenizer, seq_len=64, batch_size=1, epochs=1, shard_index=shard,
                                 shard_count=2)
        seen.append({tuple(b["input_ids"][0][b["segment_ids"][0] == s].tolist())
                     for b in batches for s in set(b["segment_ids"][0].tolist()) - {0}})
    assert not seen[0] & seen[1]
    assert len(seen[0]) + len(seen[1]) >= 18   # 20 documents, the last incomplete batch of each shard dropped


def test_a_packing_length_under_one_token_is_refused(corpus, tokenizer):
    with pytest.raises(InputError, match="seq_len .* at least one token, got 0"):
        next(packed_batches(corpus, tokenizer, seq_len=0, batch_size=2))
