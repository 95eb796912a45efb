"""The conversion engine: checkpoints between Hugging Face, Flax (Orbax) and Meta's original layout.

Every format (a module under formats/, listed in registry.py) reads a folder as a TensorSource and
writes one; convert() streams a source into a staged folder and renames it into place.
"""

from llama_twin.conversion.engine import convert
from llama_twin.conversion.registry import FORMATS, detect_format, open_source

__all__ = ["convert", "FORMATS", "detect_format", "open_source"]
