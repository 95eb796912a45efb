"""LoRA adapters for the torch twin: the twin of llama_flax/lora.py.

add_lora_layers swaps each targeted nn.Linear for a LoraLinear (a QuantizedLinear for a
LoraQuantizedLinear: QLoRA) that keeps the base layer's own weight, bias or quantized buffers, so
the state-dict keys stay Hugging Face's (q_proj.weight) with the adapter's beside them
(q_proj.lora_A.weight [r, in], q_proj.lora_B.weight [out, r]: PEFT's keys without its base_layer
level). The layer adds scaling * B(A(dropout(x))) as PEFT's Linear does; dropout acts in train mode.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from llama_shared import lora
from llama_shared import quantization as q
from llama_shared.errors import ConfigError
from llama_shared.lora import LoraConfig
from llama_torch.quantization import QuantizedLinear
from llama_torch.tensors import to_numpy, to_torch

ADAPTER_DTYPE = torch.float32  # adapters stay float32 over any base (PEFT's autocast_adapter_dtype)


def lora_a_init(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PEFT's lora_A initialisation of an [r, in] weight, in place: kaiming_uniform_(a=sqrt(5))."""
    return nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)


def lora_update(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """scaling * B(A(dropout(x))) of a Lora layer, in x's dtype (computed in the adapter's)."""
    hidden = layer.lora_A(layer.lora_dropout(x.to(layer.lora_A.weight.dtype)))
    return (layer.lora_B(hidden) * layer.adapter.scaling).to(x.dtype)


class LoraLinear(nn.Linear):
    """nn.Linear plus an adapter's update, holding the base layer's own weight and bias."""

    def __init__(self, base: nn.Linear, adapter: LoraConfig):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        _add_update(self, adapter, base.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y if self.merged else y + lora_update(self, x)


class LoraQuantizedLinear(QuantizedLinear):
    """QuantizedLinear plus an adapter's update (QLoRA): the frozen base stays quantized."""

    def __init__(self, base: QuantizedLinear, adapter: LoraConfig):
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.quantization = base.in_features, base.out_features, base.quantization
        for leaf in q.QUANTIZED_LEAVES:
            if hasattr(base, leaf):
                self.register_buffer(leaf, getattr(base, leaf))
        self.register_parameter("bias", base.bias)
        _add_update(self, adapter, base.qweight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + lora_update(self, x)


def _add_update(layer: nn.Module, adapter: LoraConfig, device: torch.device) -> None:
    """The adapter's modules of a Lora layer (A initialised as PEFT does, B zeros)."""
    layer.adapter, layer.merged, layer.unmerged_weight = adapter, False, None
    layer.lora_dropout = nn.Dropout(adapter.lora_dropout) if adapter.lora_dropout else nn.Identity()
    layer.lora_A = nn.Linear(layer.in_features, adapter.r, bias=False, device=device, dtype=ADAPTER_DTYPE)
    layer.lora_B = nn.Linear(adapter.r, layer.out_features, bias=False, device=device, dtype=ADAPTER_DTYPE)
    with torch.no_grad():
        lora_a_init(layer.lora_A.weight)
        layer.lora_B.weight.zero_()


def merged_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """weight + scaling * B @ A in float32, in the weight's dtype ([out, in])."""
    return (weight.float() + scaling * (lora_b.float() @ lora_a.float())).to(weight.dtype)


class LoraMixin:
    """Adapter methods of LlamaForCausalLM, as transformers' and PEFT's (add_adapter, load_adapter,
    merge_adapter, unmerge_adapter, merge_and_unload) plus save_adapter.

    Merging keeps each base weight aside, so unmerging restores it bit for bit.
    """

    @property
    def adapter_config(self) -> LoraConfig | None:
        """The adapter in place (merged or not), its target_modules resolved to leaf names; None without one."""
        return next((layer.adapter for _, layer in self._lora_layers()), None)

    def add_adapter(self, adapter: LoraConfig, seed: int = 0) -> None:
        """Put a new adapter on the model, initialised as PEFT does (A kaiming-uniform, B zeros), so the
        model computes what it computed before."""
        self._require_no_adapter()
        add_lora_layers(self, adapter.resolve(self.config))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, layer in self._lora_layers():
                weight = torch.empty(layer.lora_A.weight.shape, dtype=ADAPTER_DTYPE)
                layer.lora_A.weight.copy_(lora_a_init(weight, generator))

    def load_adapter(self, directory: str | os.PathLike) -> None:
        """Put the adapter of a PEFT folder on the model; names, shapes and settings are checked
        against the model before anything is built."""
        self._require_no_adapter()
        files = lora.read_adapter(directory, self.config)
        adapter = files.config
        self._check_base_weights(files)
        expected = {}
        for name, layer in self._targeted_linears(adapter):
            expected[f"{name}.lora_A.weight"] = (adapter.r, layer.in_features)
            expected[f"{name}.lora_B.weight"] = (layer.out_features, adapter.r)
        lora.check_adapter_tensors(expected, files)
        add_lora_layers(self, adapter)
        params = self.state_dict(keep_vars=True)
        with torch.no_grad():
            for key in expected:
                params[key].copy_(to_torch(files.tensors[key]))

    def save_adapter(self, directory: str | os.PathLike) -> None:
        """Write the adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors) that
        peft.PeftModel.from_pretrained and both twins load."""
        adapter = self.adapter_config
        if adapter is None:
            raise ConfigError("the model has no adapter to save")
        tensors = sorted((key, to_numpy(value)) for key, value in self.state_dict().items()
                         if lora.is_adapter_path(key.split(".")))
        lora.write_adapter(directory, adapter, tensors, getattr(self, "name_or_path", None))

    def merge_adapter(self) -> None:
        """Fold the adapter into the base weights (W + scaling * B A, in float32); the model then runs
        without the update and unmerge_adapter restores the base bit for bit."""
        adapter = self.adapter_config
        layers = [layer for _, layer in self._lora_layers()]
        if adapter is None or layers[0].merged:
            raise ConfigError("the model has no unmerged adapter to merge")
        lora.check_mergeable(adapter, self.config)
        with torch.no_grad():
            for layer in layers:
                layer.unmerged_weight = layer.weight.detach().clone()
                layer.weight.copy_(merged_weight(layer.weight, layer.lora_A.weight, layer.lora_B.weight,
                                                 adapter.scaling))
                layer.merged = True

    def unmerge_adapter(self) -> None:
        """Undo merge_adapter: the base weights as they were, the adapter applied as an update again."""
        layers = [layer for _, layer in self._lora_layers()]
        if not layers or not layers[0].merged:
            raise ConfigError("the model has no merged adapter")
        with torch.no_grad():
            for layer in layers:
                layer.weight.copy_(layer.unmerged_weight)
                layer.unmerged_weight, layer.merged = None, False

    def merge_and_unload(self) -> Any:
        """Merge the adapter and drop it: the model becomes a plain one (save_pretrained writes a
        Hugging Face folder). Returns the model."""
        layers = list(self._lora_layers())
        if layers and not layers[0][1].merged:
            self.merge_adapter()
        for name, layer in layers:
            plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
            plain.weight, plain.bias = layer.weight, layer.bias
            self.set_submodule(name, plain)
        return self

    def _lora_layers(self) -> list[tuple[str, nn.Module]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, (LoraLinear, LoraQuantizedLinear))]

    def _targeted_linears(self, adapter: LoraConfig) -> list[tuple[str, nn.Module]]:
        return [(name, m) for name, m in self.named_modules()
                if isinstance(m, (nn.Linear, QuantizedLinear)) and adapter.targets(name.rpartition(".")[2])]

    def _require_no_adapter(self) -> None:
        if self.adapter_config is not None:
            raise ConfigError("the model already has an adapter; merge_and_unload() it or load a fresh model")

    def _check_base_weights(self, files: lora.AdapterFiles) -> None:
        quantization = q.config_quantization(self.config)
        state = self.state_dict()
        for key, stored in files.base_weights.items():
            module = key.rpartition(".")[0]
            leaves = [leaf for leaf in q.QUANTIZED_LEAVES if f"{module}.{leaf}" in state] or ["weight"]
            actual = {leaf: to_numpy(state[f"{module}.{leaf}"]) for leaf in leaves}
            lora.check_base_weight(key, stored, actual, quantization if "qweight" in actual else None,
                                   files.directory)


def add_lora_layers(model: nn.Module, adapter: LoraConfig) -> None:
    """Swap every linear layer the (resolved) adapter targets for its Lora form, keeping its tensors
    (and the model's train or eval mode, so an eval model's adapter applies no dropout)."""
    for name, layer in list(model.named_modules()):
        if isinstance(layer, (nn.Linear, QuantizedLinear)) and adapter.targets(name.rpartition(".")[2]):
            lora_class = LoraQuantizedLinear if isinstance(layer, QuantizedLinear) else LoraLinear
            model.set_submodule(name, lora_class(layer, adapter).train(layer.training))
