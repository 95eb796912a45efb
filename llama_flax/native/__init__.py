"""The Flax twin's binding of llama_shared.native's quantized product to XLA's FFI (xla_ffi.cc).

Built by llama_shared.native.build against jax's FFI headers the first time a quantized layer runs
on the CPU, then registered as the custom-call targets of TARGETS; helpers come from XLA's
intra-op thread pool.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import jax

from llama_shared import native

SOURCE = Path(__file__).with_name("xla_ffi.cc")
# Code width -> (FFI target name, the symbol xla_ffi.cc defines for it).
TARGETS = {8: ("llama_twin_int8_matmul", "LlamaTwinInt8Matmul"), 4: ("llama_twin_int4_matmul", "LlamaTwinInt4Matmul")}


@functools.cache
def unavailable_reason() -> str | None:
    """Build (or find), load and register the kernel once per process; why it cannot run, or None."""
    try:
        library = ctypes.CDLL(str(native.build(SOURCE, [jax.ffi.include_dir()], key=f"jax {jax.__version__}")))
    except (native.KernelBuildError, OSError) as e:
        return str(e)
    for target, symbol in TARGETS.values():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return None
