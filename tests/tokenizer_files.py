"""The tokenizer files the tests compare against: a Llama-style sentencepiece model trained on the
spot, Meta's Llama 3 tiktoken file from the llama-models package (no downloads), and transformers'
fast tokenizer built from it. Plain functions, cached per process: tests/conftest.py serves them as
fixtures (trained_spm_path, llama3_tiktoken_path, hf_llama3_fast), benchmarks/tokenize.py calls them."""

from __future__ import annotations

import functools
import importlib.resources
import random
import tempfile
from pathlib import Path

_SYLLABLES = ["th", "e", "an", "re", "in", "on", "at", "er", "st", "ou", "ing", "al", "ed", "to",
              "is", "or", "it", "ar", "le", "ve", "ca", "mo", "pa", "si", "lu", "ke", "wa"]
_EXTRA = ["生活的真谛是", "日本語のテキスト", "données", "naïve café", "Ελληνικά", "привет мир",
          "1234567", "3.14159", "x = y + 2;", "def f(a, b):", "  indented  line", "e-mail: a@b.c",
          "🙂👍", "tab\tseparated", "C'est l'été!", "don't", "I'm", "you're"]


def english_ish_corpus(n_lines: int = 6000, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English lines with some multilingual, numeric and code noise."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    lines = []
    for i in range(n_lines):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
        sentence = sentence.capitalize() + rng.choice([".", "?", "!", ",", ";", ""])
        if i % 7 == 0:
            sentence += " " + rng.choice(_EXTRA)
        if i % 11 == 0:
            sentence = "  " + sentence + "   " + str(rng.randint(0, 10**6))
        lines.append(sentence)
    return lines


def train_llama_style_spm(out_dir: Path, vocab_size: int = 1000) -> Path:
    """Train a BPE sentencepiece model with Llama's trainer/normalizer spec; return tokenizer.model."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    corpus.write_text("\n".join(english_ish_corpus()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out_dir / "tokenizer"), model_type="bpe",
        vocab_size=vocab_size, character_coverage=0.99995, byte_fallback=True, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", add_dummy_prefix=True, split_by_unicode_script=True,
        split_by_whitespace=True, split_by_number=True, max_sentencepiece_length=16,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
    )
    return out_dir / "tokenizer.model"


def llama3_tiktoken_path() -> Path:
    """Meta's Llama 3 tokenizer.model as shipped inside the llama-models package."""
    return Path(str(importlib.resources.files("llama_models.llama3") / "tokenizer.model"))


@functools.lru_cache(maxsize=None)
def trained_spm_path() -> Path:
    """The Llama-style sentencepiece model, trained once per test process into a temporary folder."""
    return train_llama_style_spm(Path(tempfile.mkdtemp(prefix="llama_twin_spm_")))


@functools.lru_cache(maxsize=None)
def hf_llama3_fast(special_tokens: tuple[str, ...]):
    """transformers' PreTrainedTokenizerFast for Meta's Llama 3 file, built as its conversion script does."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(llama3_tiktoken_path()),
                                additional_special_tokens=list(special_tokens)).converted()
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|>:0 $A:0 <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", 128000)]),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>", clean_up_tokenization_spaces=True)
