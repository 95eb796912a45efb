"""The Flax (Linen) twin of llama-twin: FlaxLlama* models with transformers' Flax parameter paths."""

import jax

from llama_flax.cache import KVCache
from llama_flax.quantization import QuantizedDense, quantize
from llama_flax.modeling import (FlaxLlamaForCausalLM, FlaxLlamaForQuestionAnswering,
                                 FlaxLlamaForSequenceClassification, FlaxLlamaForTokenClassification, FlaxLlamaModel)
from llama_shared import outputs as _outputs
from llama_shared.config import LlamaConfig

# The shared output dataclasses travel through jax.jit as pytrees.
for _cls in (_outputs.BaseModelOutput, _outputs.CausalLMOutput, _outputs.SequenceClassifierOutput,
             _outputs.TokenClassifierOutput, _outputs.QuestionAnsweringOutput):
    jax.tree_util.register_dataclass(_cls)

__all__ = ["LlamaConfig", "KVCache", "QuantizedDense", "quantize", "FlaxLlamaModel", "FlaxLlamaForCausalLM", "FlaxLlamaForSequenceClassification",
           "FlaxLlamaForQuestionAnswering", "FlaxLlamaForTokenClassification"]
