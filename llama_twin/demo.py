"""The demo model shipped inside the package: a small Llama and its sentencepiece tokenizer.

It was trained by scripts/train_demo_model.py with llama-twin's own Flax training code (corpus,
licence and recipe in assets/demo/SOURCE.md), so that commands run without a model argument.
"""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent / "assets" / "demo"
DEMO_FILES = ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
              "generation_config.json")


def demo_model_dir() -> str:
    """The folder of the embedded demo model (a Hugging Face folder both backends load)."""
    missing = [name for name in DEMO_FILES if not (DEMO_DIR / name).is_file()]
    if missing:
        raise FileNotFoundError(f"the demo model folder {DEMO_DIR} lacks {', '.join(missing)}; "
                                "rebuild it with scripts/train_demo_model.py or pass a model folder")
    return str(DEMO_DIR)
