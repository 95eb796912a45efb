"""The framework-free core of llama-twin: config, RoPE tables, checkpoint I/O, names, masks, tokenizers,
generation settings, conversion and quantization formats. Imports neither jax nor torch."""

from llama_shared.config import LlamaConfig
from llama_shared.convert import FORMATS, convert, detect_format
from llama_shared.errors import CheckpointError, ConfigError, GenerationError, LlamaTwinError
from llama_shared.quantization import QuantizationConfig
from llama_shared.tokenizer import (AutoTokenizer, BatchEncoding, Llama3Tokenizer, LlamaTokenizer,
                                    LlamaTokenizerFast, TokenizerError)

__all__ = ["LlamaConfig", "AutoTokenizer", "BatchEncoding", "Llama3Tokenizer", "LlamaTokenizer",
           "LlamaTokenizerFast", "QuantizationConfig", "FORMATS", "convert", "detect_format",
           "CheckpointError", "ConfigError", "GenerationError", "LlamaTwinError", "TokenizerError"]
