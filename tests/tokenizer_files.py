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
                                extra_special_tokens=list(special_tokens)).converted()
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|>:0 $A:0 <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", 128000)]),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                   eos_token="<|end_of_text|>", clean_up_tokenization_spaces=True)


# ------------------------------------------------------------------------------------------------
# A corpus of varied texts and a byte-level BPE tokenizer as a SmolLM-style Llama ships it

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>"]
_CODE = ["def add(a, b):\n    return a + b\n", "for (int i = 0; i < n; ++i) { sum += x[i]; }",
         "SELECT name, COUNT(*) FROM users GROUP BY name;", "if x == 42:\n\tprint(f\"{x:08.3f}\")",
         "const f = (a) => a?.b ?? 'none';", "#include <stdio.h>\nint main(void) { return 0; }",
         "  \n  \n    indented()\n", "λx.x → ∀y ∈ ℕ", "<div class=\"a\">&amp;</div>", "echo $HOME | tr a-z A-Z"]
_SPECIAL_TEXT = ["<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>user\nhi<|im_end|>",
                 "<|begin_of_text|><|start_header_id|>system<|end_header_id|>", "<|eot_id|>", "<s>hello</s>",
                 " <s> spaced </s> ", "<|im_end|>\n<|im_start|>assistant\n", "<<s>>", "<|im_start", "im_end|>"]


def tokenizer_corpus(n_lines: int = 240, seed: int = 1) -> list[str]:
    """At least 200 varied texts: prose, unicode and emoji, whitespace runs, code, digits and text that
    is (or looks like) special tokens of the Llama, Llama 3 and ChatML families."""
    rng = random.Random(seed)
    prose = english_ish_corpus(n_lines, seed)
    pieces = _EXTRA + _CODE + _SPECIAL_TEXT + ["   ", "\n\n\n", "\t \t", "\u3000", "\u00a0x", "12 345 678.90",
                                              "2026-12-02T04:23:00Z", "0x1F600", "1e-9", "١٢٣", "🙂👍🏽👨‍👩‍👧",
                                              "e\u0301", "ÄÖÜ äöü ß", "中文，标点。", "a\u200bb", "\ufeffBOM"]
    texts = list(pieces)
    while len(texts) < n_lines:
        parts = [rng.choice(prose)] + rng.sample(pieces, rng.randint(1, 3))
        rng.shuffle(parts)
        texts.append(rng.choice(["", " ", "  ", "\n"]).join(parts))
    return texts + ["", " ", "a"]


@functools.lru_cache(maxsize=None)
def byte_level_bpe_json(vocab_size: int = 1200) -> str:
    """tokenizer.json content of a byte-level BPE trained here as SmolLM's is built: digits split one
    by one before GPT-2's byte-level step, ChatML special tokens, a post-processor that adds nothing."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHATML_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(english_ish_corpus(3000, seed=5) + _CODE * 20, trainer)
    return tokenizer.to_str()


# Chat conversations for apply_chat_template comparisons: roles, spaces, unicode, special-token text.
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": " What is 2+2? "},
     {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3+3?\n"}],
    [{"role": "user", "content": "生活的真谛是 <s> 🙂 <|im_end|>"}, {"role": "assistant", "content": "  spaced  "},
     {"role": "user", "content": "ok 12345"}],
]
