"""Llama's tokenizers without transformers: sentencepiece (Llama 1/2), tokenizer.json (fast: Llama,
byte-level BPE, any tokenizers file), tiktoken (Llama 3), GGUF metadata, AutoTokenizer to build one
from a folder or GGUF file as transformers 5 does, and chat templates rendered in a sandbox."""

from llama_shared.tokenizers.auto import TOKENIZER_FILES, AutoTokenizer
from llama_shared.tokenizers.base import BatchEncoding
from llama_shared.tokenizers.chat_template import LLAMA2_CHAT_TEMPLATE, LLAMA3_CHAT_TEMPLATE
from llama_shared.tokenizers.fast import LlamaTokenizerFast, PreTrainedTokenizerFast
from llama_shared.tokenizers.llama3 import Llama3Tokenizer
from llama_shared.tokenizers.spm import LlamaTokenizer

__all__ = ["TOKENIZER_FILES", "AutoTokenizer", "BatchEncoding", "LLAMA2_CHAT_TEMPLATE", "LLAMA3_CHAT_TEMPLATE",
           "LlamaTokenizerFast", "PreTrainedTokenizerFast", "Llama3Tokenizer", "LlamaTokenizer"]
