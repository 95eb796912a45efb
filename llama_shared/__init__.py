"""The framework-free core of llama-twin: config, RoPE tables, checkpoint I/O, names, masks, tokenizers."""

from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError, ConfigError, GenerationError, LlamaTwinError

__all__ = ["LlamaConfig", "CheckpointError", "ConfigError", "GenerationError", "LlamaTwinError"]
