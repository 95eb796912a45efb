"""The CPU kernel both twins share: quantized_matmul.h, built once per machine by its C++ compiler.

XLA:CPU cannot fuse a weight's dequantization into its dot, and aten's weight-only kernels are
vectorised for bfloat16 only and slower than this one (benchmarks/log/2026-12-02-quantization.md),
so quantized_matmul.h multiplies int8 codes or int4 nibbles by float32 activations without ever
writing a dequantized weight. Each twin binds it in its own folder: llama_flax/native/xla_ffi.cc to
XLA's FFI (helpers from XLA's intra-op pool), llama_torch/native/c_api.cc to a C function driven by
OpenMP (torch's own thread team). build() compiles a binding with ``$CXX`` (else ``c++``) and
``-O3 -march=native``, and caches the library under ``$LLAMA_TWIN_CACHE`` (default
``~/.cache/llama-twin``) by a hash of the sources, the compiler, the flags and the CPU, so a shared
home folder never hands one machine another's instructions.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_shared.errors import ConfigError

FOLDER = Path(__file__).parent
HEADER = FOLDER / "quantized_matmul.h"
# quantized_matmul.h's GROUP_MULTIPLE: int8 codes are read 16 columns at a time (int4 groups, 16 / 32 / 64 / 128
# columns, all fit its steps).
GROUP_MULTIPLE = 16
# The most input rows either twin's "auto" kernel gives the native product (a prompt of up to 32
# tokens included): more rows amortise a whole dequantized weight over the framework's float product.
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


def build(source: Path, include_dirs: Sequence[str] = (), flags: Sequence[str] = (), key: str = "") -> Path:
    """The shared library of a binding (source includes quantized_matmul.h): from the cache, else
    compiled into a temporary file renamed into place, so concurrent builds never load a half-written
    one. key names what else the library depends on (the jax whose FFI headers it includes)."""
    cxx = compiler()
    command = [cxx, *COMPILE_FLAGS, *flags, f"-I{FOLDER}", *(f"-I{d}" for d in include_dirs), str(source)]
    digest = hashlib.sha256("\n".join([source.read_text(), HEADER.read_text(), *command, key,
                                       cpu_identity()]).encode()).hexdigest()[:16]
    library = cache_folder() / "kernels" / f"{source.stem}-{digest}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=library.parent, suffix=".so.partial")
    os.close(handle)
    command += ["-o", partial]
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


def format_reason(quantization: Any, in_features: int) -> str | None:
    """Why quantized_matmul.h cannot multiply a layer of this format (None: it can)."""
    columns = quantization.group_size or in_features
    if columns % GROUP_MULTIPLE:
        return (f"{quantization.name}: the native kernel takes groups of a multiple of {GROUP_MULTIPLE} input "
                f"columns, the layer's are {columns}")
    return None


def kernel_offsets(tensors: dict[str, Any], scales: Any, code_min: int) -> Any | None:
    """What quantized_matmul.h adds per group to code * scale: -zero * scale, or min - qmin * scale for
    float zero points; None for a symmetric layer. For jax and torch arrays alike: scales in float32,
    to which the result promotes."""
    if "mins" in tensors:
        return tensors["mins"] - code_min * scales
    if "zeros" in tensors:
        return -(tensors["zeros"] * scales)
    return None


def takes_native(kernel: str, reason: str | None, rows: int, unavailable: str | None) -> bool:
    """Both twins' choice for one call: kernel "cpu" always takes the native product (ConfigError with
    the reason where it cannot run); "auto" takes it for up to MAX_ROWS rows where it can run, and
    warns once, naming why, when it falls back on a CPU where it could not be built (unavailable)."""
    if kernel == "cpu":
        if reason:
            raise ConfigError(f"quantization kernel 'cpu' cannot run here: {reason}; use kernel 'auto' or 'portable'")
        return True
    if reason is None:
        return rows <= MAX_ROWS
    if unavailable:
        warnings.warn(f"llama-twin's native CPU kernel for quantized layers is unavailable ({unavailable}); "
                      f"quantized layers take the slower portable product", RuntimeWarning, stacklevel=4)
    return False
