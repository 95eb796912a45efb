"""Streamers give the generated text piece by piece, never splitting a multi-byte character,
and both twins stream the same tokens they return."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from llama_shared.streaming import TextIteratorStreamer, TextStreamer


@pytest.fixture(scope="module")
def folder(model_folder_with_tokenizer, tmp_path_factory):
    return model_folder_with_tokenizer(tmp_path_factory.mktemp("streaming") / "model")


@pytest.fixture(scope="module")
def tokenizer(folder):
    from llama_shared.tokenizers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_pieces_join_to_the_decoded_text_without_broken_characters(tokenizer):
    text = "Naïve café 日本語のテキスト 🙂👍 ꙮ€ ends here\nnext line"   # ꙮ€: byte-fallback tokens
    ids = tokenizer.encode(text, add_special_tokens=False)
    partial = [tokenizer.decode(ids[:n]) for n in range(1, len(ids))]
    assert any(p.endswith("\ufffd") for p in partial), "the text should split a character across tokens"
    pieces = []
    streamer = TextStreamer(tokenizer, on_text=pieces.append)
    streamer.put(np.array([ids[:1]]))
    for token in ids[1:]:
        streamer.put(np.array([token]))
    streamer.end()
    assert "".join(pieces) == tokenizer.decode(ids)
    assert len(pieces) > 3
    assert not any("\ufffd" in piece for piece in pieces)


def test_skip_prompt_streams_only_new_text(tokenizer):
    pieces = []
    streamer = TextStreamer(tokenizer, skip_prompt=True, on_text=pieces.append)
    prompt = tokenizer.encode("hello there", add_special_tokens=False)
    reply = tokenizer.encode(" general kenobi", add_special_tokens=False)
    streamer.put(np.array([prompt]))
    for token in reply:
        streamer.put(np.array([token]))
    streamer.end()
    assert "".join(pieces) == tokenizer.decode(reply)


def test_one_row_at_a_time(tokenizer):
    with pytest.raises(ValueError, match="one row"):
        TextStreamer(tokenizer).put(np.ones((2, 3), np.int64))


@pytest.mark.parametrize("backend", ["torch", "flax"])
def test_streamed_text_is_the_generated_text(backend, folder, tokenizer):
    if backend == "torch":
        import torch

        from llama_torch import LlamaForCausalLM

        model, prompt = LlamaForCausalLM.from_pretrained(folder), torch.tensor([[1, 45, 99, 300]])
    else:
        from llama_flax import FlaxLlamaForCausalLM

        model, prompt = FlaxLlamaForCausalLM.from_pretrained(folder), np.array([[1, 45, 99, 300]])
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=120)
    result = {}
    sampling = dict(max_new_tokens=12, do_sample=True, seed=3, eos_token_id=[])
    worker = threading.Thread(target=lambda: result.update(
        ids=np.asarray(model.generate(prompt, streamer=streamer, stats=result, **sampling))))
    worker.start()
    streamed = "".join(streamer)
    worker.join()
    assert streamed == tokenizer.decode(result["ids"][0, 4:].tolist())
    assert result["new_tokens"] == 12 and result["time_to_first_token_s"] > 0
    np.testing.assert_array_equal(result["ids"], np.asarray(model.generate(prompt, **sampling)))
