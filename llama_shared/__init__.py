"""The framework-free core of llama-twin: config, RoPE tables, checkpoint I/O, names, masks, tokenizers,
generation settings, conversion and quantization formats. Imports neither jax nor torch."""

from llama_shared.config import LlamaConfig
from llama_shared.convert import FORMATS, convert, detect_format
from llama_shared.demo import demo_model_dir
from llama_shared.errors import CheckpointError, ConfigError, GenerationError, LlamaTwinError
from llama_shared.generation import GenerationConfig
from llama_shared.mask_visualizer import AttentionMaskVisualizer
from llama_shared.parity import ParityReport, parity_report
from llama_shared.pipeline import pipeline
from llama_shared.quantization import QuantizationConfig
from llama_shared.streaming import TextIteratorStreamer, TextStreamer
from llama_shared.tokenizer import (AutoTokenizer, BatchEncoding, Llama3Tokenizer, LlamaTokenizer,
                                    LlamaTokenizerFast, TokenizerError)

__all__ = ["LlamaConfig", "GenerationConfig", "pipeline", "TextStreamer", "TextIteratorStreamer",
           "AttentionMaskVisualizer", "ParityReport", "parity_report", "demo_model_dir", "AutoTokenizer",
           "BatchEncoding", "Llama3Tokenizer", "LlamaTokenizer", "LlamaTokenizerFast", "QuantizationConfig",
           "FORMATS", "convert", "detect_format", "CheckpointError", "ConfigError", "GenerationError",
           "LlamaTwinError", "TokenizerError"]
