"""llama-twin's application layer, above both twins: the text-generation pipeline, the conversion
engine, layer-by-layer parity reports, the attention-mask visualizer, the embedded demo model and
the `llama-twin` command line.

The names below are imported on first use (PEP 562), so that ``import llama_twin`` and the command
line pay only for what they touch: the twins import jax or torch, seconds each.
"""

from __future__ import annotations

import importlib
from typing import Any

# Exported name -> the module that defines it.
EXPORTS = {
    "FORMATS": "llama_twin.conversion",
    "convert": "llama_twin.conversion",
    "detect_format": "llama_twin.conversion",
    "demo_model_dir": "llama_twin.demo",
    "AttentionMaskVisualizer": "llama_twin.mask_visualizer",
    "ParityReport": "llama_twin.parity",
    "parity_report": "llama_twin.parity",
    "TextGenerationPipeline": "llama_twin.pipelines",
    "pipeline": "llama_twin.pipelines",
}

__all__ = list(EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module 'llama_twin' has no attribute {name!r}")
    value = getattr(importlib.import_module(EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
