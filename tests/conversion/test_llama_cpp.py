"""llama.cpp itself (the llama-cpp-python package, which compiles it from source) as a third
implementation: a model exported by `convert --to gguf` gives the twins' logits there, and its
tokenizer gives our GGUF tokenizer's ids. The package is not in the test extra (its build takes
about ten minutes on two cores, too long for CI): these tests skip where it is not installed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from llama_torch import LlamaForCausalLM
from llama_twin.conversion import convert
from tests.tokenizer_files import tokenizer_corpus

llama_cpp = pytest.importorskip("llama_cpp")

GGML_TYPE_F32 = 0


@pytest.fixture(scope="module")
def exported(hf_checkpoint, trained_spm_path, tmp_path_factory):
    """factory(gguf_type) -> folder with model.gguf exported from a random checkpoint (vocab 1000, the
    test sentencepiece tokenizer)."""
    folder = tmp_path_factory.mktemp("llama-cpp-src")
    shutil.copytree(hf_checkpoint(vocab_size=1000, hidden_size=256, intermediate_size=512), folder,
                    dirs_exist_ok=True)
    shutil.copy(trained_spm_path, folder / "tokenizer.model")
    made = {}

    def make(gguf_type: str):
        if gguf_type not in made:
            out = tmp_path_factory.mktemp(f"llama-cpp-{gguf_type}")
            convert(folder, out / "model.gguf", "gguf", gguf_type=gguf_type, progress=False)
            made[gguf_type] = out
        return made[gguf_type]

    return make


@pytest.fixture
def no_weight_repacking(monkeypatch):
    """llama.cpp's repacked quantized kernels (AMX here) crash on the project's VM, which reports
    AMX_INT8 but does not run it: load weights as stored (use_extra_bufts=False)."""
    default = llama_cpp.llama_model_default_params

    def params():
        chosen = default()
        chosen.use_extra_bufts = False
        return chosen

    monkeypatch.setattr(llama_cpp.llama.llama_cpp, "llama_model_default_params", params)


def llama_cpp_logits(path, ids: list[int]) -> np.ndarray:
    """llama.cpp's float32 logits of every position, with a float32 KV cache."""
    model = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=1,
                            type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False)
    model.eval(ids)
    return np.array(model.scores[:len(ids)], dtype=np.float32)


@pytest.mark.parametrize("gguf_type", ["f32", "q8_0"])
def test_llama_cpp_logits_equal_the_twins(gguf_type, exported, no_weight_repacking):
    folder = exported(gguf_type)
    ids = np.random.default_rng(0).integers(3, 1000, size=48).tolist()
    ours = LlamaForCausalLM.from_pretrained(folder, gguf_file="model.gguf")
    with torch.no_grad():
        expected = ours(torch.tensor([ids])).logits[0].numpy()
    got = llama_cpp_logits(folder / "model.gguf", ids)
    assert np.abs(expected).max() > 0.5
    if gguf_type == "f32":   # float32 products summed in another order
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)
        return
    # With q8_0 weights llama.cpp also rounds the activations to 8 bits (its q8_0 x q8_0 dot
    # product), so it is held to the reduced-precision bar: next-token KL per position (MaxText's).
    log_p = torch.log_softmax(torch.tensor(expected), -1)
    log_q = torch.log_softmax(torch.tensor(got), -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    assert float(kl.max()) < 0.015, float(kl.max())


def test_llama_cpp_tokenizes_an_exported_sentencepiece_vocabulary_as_sentencepiece(exported, trained_spm_path):
    """The export writes the sentencepiece model's scores, which llama.cpp merges by: its ids are
    sentencepiece's own (legacy prefix handling; texts without special-token text)."""
    import sentencepiece

    reference = sentencepiece.SentencePieceProcessor(model_file=str(trained_spm_path))
    model = llama_cpp.Llama(model_path=str(exported("f32") / "model.gguf"), vocab_only=True, verbose=False)
    checked = 0
    for text in tokenizer_corpus():
        if any(token in text for token in ("<s>", "</s>", "<unk>")) or not text:
            continue
        assert model.tokenize(text.encode("utf-8"), add_bos=False) == reference.encode(text), text
        checked += 1
    assert checked >= 200
