"""A tiny random Llama folder that carries a tokenizer, for the pipeline, CLI and streaming tests."""

from __future__ import annotations

import shutil
from pathlib import Path

from fixtures_tokenizer import trained_spm_path

VOCAB = 1000   # the size of the test-trained sentencepiece model


def model_folder_with_tokenizer(hf_checkpoint, destination: Path) -> Path:
    """Copy of a random transformers checkpoint (vocab 1000) plus the test sentencepiece tokenizer."""
    shutil.copytree(hf_checkpoint(vocab_size=VOCAB), destination)
    shutil.copy(trained_spm_path(), destination / "tokenizer.model")
    return destination
