"""The PyTorch twin of llama-twin: Hugging Face's Llama classes with the same state-dict keys."""

from llama_shared.config import LlamaConfig
from llama_torch.cache import KVCache
from llama_torch.quantization import QuantizedLinear, quantize
from llama_torch.modeling import (LlamaForCausalLM, LlamaForQuestionAnswering, LlamaForSequenceClassification,
                                  LlamaForTokenClassification, LlamaModel)

__all__ = ["LlamaConfig", "KVCache", "QuantizedLinear", "quantize", "LlamaModel", "LlamaForCausalLM", "LlamaForSequenceClassification",
           "LlamaForQuestionAnswering", "LlamaForTokenClassification"]
