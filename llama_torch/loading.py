"""from_pretrained / save_pretrained for the torch twin, on Hugging Face's folder layout.

The twin of llama_flax/loading.py. Weights stream from safetensors one tensor at a time into a
model built on the meta device, so loading never holds two copies of the model.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from llama_shared.checkpoints import (DEFAULT_SHARD_SIZE, Checkpoint, requested_dtype, tensor_nbytes,
                                     write_checkpoint)
from llama_shared.checkpoints.model_files import open_model_files
from llama_shared.config import LlamaConfig
from llama_shared.errors import ConfigError
from llama_shared.generation import GenerationConfig
from llama_shared.parameters import check_tensors, checkpoint_specs
from llama_shared.progress import QUIET_BELOW, byte_progress
from llama_shared.quantization import QuantizationConfig, checkpoint_metadata, config_quantization, open_for_loading
from llama_torch.generation import TOKEN_IDS_CHECKED, GenerationMixin
from llama_torch.quantization import replace_linears
from llama_torch.tensors import to_numpy, to_torch

def resolve_dtype(dtype: torch.dtype | str | None, config: LlamaConfig) -> torch.dtype:
    """float32 by default (as transformers); "auto" takes the checkpoint's torch_dtype; names or torch dtypes."""
    wanted = requested_dtype(dtype, config.torch_dtype)
    return getattr(torch, wanted.name) if isinstance(wanted, np.dtype) else wanted


class PreTrainedModel(GenerationMixin, nn.Module):
    """Weight init, tying, token checks and Hugging Face folder I/O shared by the five model classes."""

    base_prefix = ""
    name_or_path: str | None = None  # the folder or repo id from_pretrained read

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config

    # ------------------------------------------------------------------------------------------
    # Initialisation

    def init_weights(self) -> None:
        """Normal(0, initializer_range) for linear and embedding weights, zero biases, unit norms."""
        self.apply(self._init_module)

    def _init_module(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def tie_weights(self) -> None:
        """Share the embedding with lm_head when the config ties them (a quantized embedding's head
        already multiplies by it)."""
        if self.config.tie_word_embeddings and hasattr(self, "lm_head") and hasattr(self.lm_head, "weight"):
            self.lm_head.weight = self.get_submodule(self._embedding_path()).weight

    def _embedding_path(self) -> str:
        return f"{self.base_prefix}.embed_tokens" if self.base_prefix else "embed_tokens"

    def check_token_ids(self, input_ids: torch.Tensor) -> None:
        """Raise if a token id is outside [0, vocab_size) (skipped inside torch.compile and generate)."""
        if torch.compiler.is_compiling() or TOKEN_IDS_CHECKED.get() or input_ids.numel() == 0:
            return
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"input_ids holds token id {bad}, outside the vocabulary [0, {self.config.vocab_size})")

    @property
    def architecture(self) -> str:
        """The transformers class this model is (FSDP2 makes a sharded model's class a subclass of it)."""
        return next(c.__name__ for c in type(self).__mro__ if PreTrainedModel in c.__bases__)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # ------------------------------------------------------------------------------------------
    # Hugging Face folders

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, dtype: torch.dtype | str | None = None,
                        device: torch.device | str = "cpu", config: LlamaConfig | None = None,
                        quantization: str | QuantizationConfig | None = None, group_size: int | None = None,
                        gguf_file: str | None = None, adapter: str | os.PathLike | None = None,
                        **config_overrides: Any) -> "PreTrainedModel":
        """Load a Hugging Face folder (config.json + safetensors) or hub repo id; with gguf_file, that
        GGUF file in the folder or repo (config from its metadata, tensors dequantized to float32).

        quantization "int8" or "int4" (group_size 32, 64 or 128; default 128) quantizes the linear
        layers tensor by tensor as they load; a quantized checkpoint loads as it was saved.
        adapter: a PEFT LoRA folder to put on the causal LM (load_adapter).
        """
        directory, config, gguf = open_model_files(path_or_repo_id, gguf_file, config, config_overrides)
        target = resolve_dtype(dtype, config)
        scale_dtype = to_numpy(torch.empty(0, dtype=target)).dtype
        config, checkpoint = open_for_loading(gguf or Checkpoint(directory), config, quantization, group_size,
                                              scale_dtype)
        # Checked before the model is built: the meta-device build alone takes time in the layer count.
        check_tensors(checkpoint_specs(checkpoint), config, cls.__name__, checkpoint.directory)
        with torch.device("meta"):
            model = cls(config).to(target)
            if config_quantization(config) is not None:  # after .to(): scales keep their own dtype
                replace_linears(model, config_quantization(config))
        model = model.to_empty(device=device)
        model.tie_weights()
        model.load_checkpoint(checkpoint)
        model.generation_config = GenerationConfig.for_model(directory, config)
        model.name_or_path = str(path_or_repo_id)
        if adapter is not None:
            if not hasattr(model, "load_adapter"):
                raise ConfigError(f"{cls.__name__} takes no adapter: LoRA adapters go on the causal LM")
            model.load_adapter(adapter)
        return model.eval()

    def load_checkpoint(self, checkpoint: Checkpoint, place: Callable[..., None] | None = None,
                        progress: bool = True) -> list[str]:
        """Copy every tensor the model expects from the checkpoint, after checking all their names,
        shapes and dtypes against the config (llama_shared.parameters); return the names of the
        task-head parameters the checkpoint lacks, newly initialised.

        place(param, checkpoint, key) fills one parameter from a stored tensor; by default the tensor
        is read whole (llama_torch.parallel reads each rank's block of a sharded parameter, and shows
        the progress bar on rank 0 only).
        """
        place = place or _read_whole
        key_map = check_tensors(checkpoint_specs(checkpoint), self.config, self.architecture, checkpoint.directory)
        params = self.state_dict(keep_vars=True)
        fresh_heads = [name for name, source in key_map.items() if source is None]
        sizes = ((name, tensor_nbytes(checkpoint, source)) for name, source in key_map.items() if source is not None)
        for name in byte_progress(sizes, f"loading {checkpoint.directory}", QUIET_BELOW if progress else math.inf):
            with torch.no_grad():
                place(params[name], checkpoint, key_map[name])
        if fresh_heads:
            with torch.no_grad():
                for name in fresh_heads:
                    param = params[name]
                    param.normal_(0.0, self.config.initializer_range) if name.endswith("weight") else param.zero_()
            warnings.warn(f"{', '.join(fresh_heads)} not in the checkpoint: newly initialised, train before use",
                          stacklevel=3)
        self.tie_weights()
        return fresh_heads

    def save_pretrained(self, directory: str | os.PathLike, max_shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        """Write config.json and safetensors that transformers (and the Flax twin) load unchanged."""
        if getattr(self, "adapter_config", None) is not None:
            raise ConfigError("the model carries a LoRA adapter: save_adapter(dir) writes the adapter, "
                              "merge_and_unload().save_pretrained(dir) the merged model")
        state = self.state_to_save()
        # A sharded model holds DTensors; importing their module costs a second, so look only when loaded.
        dtensor = sys.modules.get("torch.distributed.tensor")
        if dtensor is not None and any(isinstance(v, dtensor.DTensor) for v in state.values()):
            raise ValueError(f"this {self.architecture} is sharded over processes: save it with "
                             f"llama_torch.parallel.save_pretrained_sharded, which gathers it into one folder")
        specs = {k: (tuple(v.shape), to_numpy(v.reshape(-1)[:1]).dtype) for k, v in state.items()}
        self.write_pretrained(directory, specs, ((k, to_numpy(v)) for k, v in state.items()), max_shard_size)

    def state_to_save(self) -> dict[str, torch.Tensor]:
        """The state dict as a Hugging Face folder holds it: without lm_head.weight when tied."""
        return {k: v for k, v in self.state_dict().items()
                if not (self.config.tie_word_embeddings and k == "lm_head.weight")}

    def write_pretrained(self, directory: str | os.PathLike, specs: dict[str, tuple[tuple[int, ...], np.dtype]],
                         tensors: Iterable[tuple[str, np.ndarray]], max_shard_size: int = DEFAULT_SHARD_SIZE) -> None:
        """config.json, generation_config.json and the tensors (streamed in the order of specs) into directory."""
        os.makedirs(directory, exist_ok=True)
        dtype_name = str(self.dtype).removeprefix("torch.")
        self.config.replace(torch_dtype=dtype_name, architectures=[self.architecture]).save_pretrained(directory)
        write_checkpoint(directory, specs, tensors, max_shard_size, checkpoint_metadata(self.config))
        if self.can_generate():
            self.generation_defaults().save_pretrained(directory)


def _read_whole(param: torch.Tensor, checkpoint: Checkpoint, key: str) -> None:
    param.copy_(to_torch(checkpoint.read(key)))
