"""The Flax twin's C++ kernel for XLA:CPU: the weight-only quantized product, built once per machine.

XLA:CPU never fuses a weight's dequantization into its dot (benchmarks/log/2026-12-02-quantization.md
tried a dozen formulations), so quantized_matmul.h multiplies int8 / int4 codes without ever writing
a dequantized weight, and xla_ffi.cc binds it to XLA's FFI (helpers from XLA's intra-op pool). It
is compiled with ``$CXX`` (else ``c++``) and ``-O3 -march=native`` against jax's FFI headers the first
time a quantized layer runs on the CPU, cached under ``$LLAMA_TWIN_CACHE`` (default
``~/.cache/llama-twin``) by a hash of the sources, the compiler, the flags, jax's version and the CPU
(a shared home folder never hands one machine another's instructions), then registered as TARGETS.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax

FOLDER = Path(__file__).parent
HEADER = FOLDER / "quantized_matmul.h"
SOURCE = FOLDER / "xla_ffi.cc"
# Code width -> (FFI target name, the symbol xla_ffi.cc defines for it).
TARGETS = {8: ("llama_twin_int8_matmul", "LlamaTwinInt8Matmul"), 4: ("llama_twin_int4_matmul", "LlamaTwinInt4Matmul")}
# quantized_matmul.h's GROUP_MULTIPLE: a group's columns are read 16 at a time (8 bytes of nibbles).
GROUP_MULTIPLE = 16
# The most input rows the "auto" kernel gives the native product (a prompt of up to 32 tokens
# included): more rows amortise a whole dequantized weight over XLA's multi-core float product.
MAX_ROWS = 32
COMPILE_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
COMPILE_SECONDS = 600


class KernelBuildError(RuntimeError):
    """The kernels cannot be built or loaded here; the message says why."""


def cache_folder() -> Path:
    """Where built kernels are kept: $LLAMA_TWIN_CACHE, else llama-twin under XDG_CACHE_HOME or ~/.cache."""
    root = os.environ.get("LLAMA_TWIN_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llama-twin"


def compiler() -> str:
    """The C++ compiler to build with: $CXX, else c++ on the PATH."""
    if platform.system() == "Windows":
        raise KernelBuildError("the native kernels are built with a Unix C++ toolchain, which Windows lacks")
    name = os.environ.get("CXX") or "c++"
    path = shutil.which(name)
    if path is None:
        raise KernelBuildError(f"no C++ compiler: {name!r} is not on the PATH (set CXX to one)")
    return path


def cpu_identity() -> str:
    """The CPU's model and instruction-set flags (-march=native builds for exactly these)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features", "CPU implementer", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def build(cxx: str) -> Path:
    """The kernel's shared library: from the cache, else compiled into a temporary file renamed into
    place, so concurrent builds never load a half-written one."""
    key = hashlib.sha256("\n".join([SOURCE.read_text(), HEADER.read_text(), cxx, *COMPILE_FLAGS, jax.__version__,
                                    cpu_identity()]).encode()).hexdigest()[:16]
    folder = cache_folder() / "kernels"
    library = folder / f"quantized_matmul-{key}.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=folder, suffix=".so.partial")
    os.close(handle)
    command = [cxx, *COMPILE_FLAGS, f"-I{FOLDER}", f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", partial]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_SECONDS)
        if result.returncode:
            raise KernelBuildError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
        os.replace(partial, library)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KernelBuildError(f"{' '.join(command)} could not run: {e}") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return library


@functools.cache
def unavailable_reason() -> str | None:
    """Build (or find), load and register the kernel once per process; why it cannot run, or None."""
    try:
        library = ctypes.CDLL(str(build(compiler())))
    except (KernelBuildError, OSError) as e:
        return str(e)
    for target, symbol in TARGETS.values():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    return None
