"""pipeline("text-generation", ...) in both backends: transformers' result shapes, return_full_text,
chat messages through the chat template, batches of prompts."""

from __future__ import annotations

import numpy as np
import pytest

from llama_twin.pipelines import pipeline


@pytest.fixture(scope="module")
def folder(model_folder_with_tokenizer, tmp_path_factory):
    return model_folder_with_tokenizer(tmp_path_factory.mktemp("pipeline") / "model")


@pytest.fixture(scope="module", params=["torch", "flax"])
def generator(request, folder):
    return pipeline("text-generation", model=str(folder), backend=request.param, max_new_tokens=8)


def test_a_prompt_gives_full_text(generator):
    prompt = "The quick brown fox"
    result = generator(prompt)
    assert isinstance(result, list) and len(result) == 1
    text = result[0]["generated_text"]
    assert text.startswith(prompt) and len(text) > len(prompt)
    reply = generator(prompt, return_full_text=False)[0]["generated_text"]
    assert text == prompt + reply


def test_reply_is_the_decoded_new_tokens(generator, folder):
    tokenizer = generator.tokenizer
    prompt = "Once upon a time"
    ids = np.asarray([tokenizer.encode(prompt)])
    if generator.backend == "torch":
        import torch

        ids = torch.from_numpy(ids)
    out = np.asarray(generator.model.generate(ids, max_new_tokens=8))
    full = tokenizer.decode(out[0].tolist(), skip_special_tokens=True)
    expected = full[len(tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)):]
    assert generator(prompt, return_full_text=False)[0]["generated_text"] == expected


def test_batch_of_prompts_equals_one_at_a_time(generator):
    prompts = ["short", "a somewhat longer prompt than the first one"]
    together = generator(prompts, return_full_text=False)
    assert [len(r) for r in together] == [1, 1]
    for prompt, result in zip(prompts, together):
        assert result[0]["generated_text"] == generator(prompt, return_full_text=False)[0]["generated_text"]


def test_chat_messages_use_the_template(generator):
    messages = [{"role": "user", "content": "Hello, who are you?"}]
    result = generator(messages)[0]["generated_text"]
    assert result[:-1] == messages and result[-1]["role"] == "assistant"
    rendered = generator.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ids = np.asarray([rendered])
    if generator.backend == "torch":
        import torch

        ids = torch.from_numpy(ids)
    out = np.asarray(generator.model.generate(ids, max_new_tokens=8))
    full = generator.tokenizer.decode(out[0].tolist(), skip_special_tokens=True)
    expected = full[len(generator.tokenizer.decode(list(rendered), skip_special_tokens=True)):]
    assert result[-1]["content"] == expected
    assert generator(messages, return_full_text=False)[0]["generated_text"] == expected


def test_bad_task_and_backend():
    with pytest.raises(ValueError, match="text-generation"):
        pipeline("summarization", model="x")
    with pytest.raises(ValueError, match="backend"):
        pipeline("text-generation", model="x", backend="tensorflow")
