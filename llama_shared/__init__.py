"""The framework-free core of llama-twin: config, presets, RoPE tables, the parameter-name table,
mask rules, checkpoint I/O, tokenizers, generation settings and the quantization format.

numpy only: nothing here imports jax, flax, optax, orbax, torch or a twin (tests/core checks the
syntax trees), so both twins build on it and neither depends on the other.
"""

from llama_shared.config import LlamaConfig
from llama_shared.errors import (CheckpointError, ConfigError, ConversionError, GenerationError, LlamaTwinError,
                                 TokenizerError)
from llama_shared.generation import GenerationConfig
from llama_shared.quantization import QuantizationConfig
from llama_shared.streaming import TextIteratorStreamer, TextStreamer
from llama_shared.tokenizers import (AutoTokenizer, BatchEncoding, Llama3Tokenizer, LlamaTokenizer, LlamaTokenizerFast,
                                     PreTrainedTokenizerFast)

__all__ = ["LlamaConfig", "GenerationConfig", "QuantizationConfig", "TextStreamer", "TextIteratorStreamer",
           "AutoTokenizer", "BatchEncoding", "Llama3Tokenizer", "LlamaTokenizer", "LlamaTokenizerFast",
           "PreTrainedTokenizerFast",
           "CheckpointError", "ConfigError", "ConversionError", "GenerationError", "LlamaTwinError",
           "TokenizerError"]
