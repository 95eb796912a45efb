"""The framework-free core of llama-twin: config, RoPE tables, checkpoint I/O, names, masks, tokenizers."""

from llama_shared.config import LlamaConfig
from llama_shared.errors import CheckpointError, ConfigError, GenerationError, LlamaTwinError
from llama_shared.tokenizer import (AutoTokenizer, BatchEncoding, Llama3Tokenizer, LlamaTokenizer,
                                    LlamaTokenizerFast, TokenizerError)

__all__ = ["LlamaConfig", "AutoTokenizer", "BatchEncoding", "Llama3Tokenizer", "LlamaTokenizer",
           "LlamaTokenizerFast", "CheckpointError", "ConfigError", "GenerationError", "LlamaTwinError",
           "TokenizerError"]
