"""Where a from_pretrained call's config and weights come from: a Hugging Face folder (or hub repo)
with config.json, or one GGUF file in it. Both twins' loaders start here."""

from __future__ import annotations

import os
from typing import Any

from llama_shared.checkpoints.gguf import GGUFCheckpoint, open_gguf
from llama_shared.checkpoints.gguf_quantized import QuantizedGGUF, open_quantized
from llama_shared.checkpoints.hub import resolve_model_dir
from llama_shared.config import LlamaConfig


def open_model_files(path_or_repo_id: str | os.PathLike, gguf_file: str | None, config: LlamaConfig | None,
                     overrides: dict[str, Any]) -> tuple[str, LlamaConfig, GGUFCheckpoint | QuantizedGGUF | None]:
    """(folder, config, the opened GGUF file or None). The config is the one given, else the GGUF
    file's metadata or the folder's config.json, with the keyword overrides applied. A GGUF file
    whose matrices are Q8_0, Q4_0 or Q4_1 opens quantized (llama_shared.checkpoints.gguf_quantized)."""
    if gguf_file is None:
        directory = resolve_model_dir(path_or_repo_id)
        return directory, config or LlamaConfig.from_pretrained(directory, **overrides), None
    gguf = open_quantized(open_gguf(path_or_repo_id, gguf_file))
    if config is None:
        config = gguf.config().replace(**overrides) if overrides else gguf.config()
    return os.path.dirname(gguf.path), config, gguf
