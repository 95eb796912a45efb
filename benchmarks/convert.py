"""Conversion of a 1B-parameter random checkpoint: peak RSS against the largest tensor + 1.5 GB, and
read speed against the disk's sequential read speed measured in the same run.

The checkpoint has Llama-3.2-1B's shapes (1.24B parameters, bfloat16, tied embeddings) with random
values, written by the streaming safetensors writer. Before every timed step all dirty pages are
written back (os.sync), so no measurement pays for the previous one's writing, and the page cache
of every file in the benchmark's folder is dropped (posix_fadvise DONTNEED), so each read comes
from the disk and no step first has to reclaim memory that earlier steps' files filled. The disk's
sequential speed is a 16 MB-block read of a file of the checkpoint's size, each block dropped from
the page cache once read (the speed of a plain read, which fills the page cache, is printed beside
it: on a VM whose free memory goes back to the host it measures that memory's first touch as much
as the disk). The copy reference reads that file and writes a copy of it, plainly, as cp does.
The duplex reference is the disk's own ceiling for a conversion: the file read by one thread while
another writes the blocks straight to the disk (O_DIRECT), so that reading and writing share the
device at the same time (a conversion whose writes stay in the page cache can beat it).
A conversion's read speed is the bytes it reads over its whole wall time (writing included), so
the ratio to the disk's read speed is a lower bound; torch and orbax are imported before the clock
starts. Each conversion runs in a fresh process whose peak RSS (VmHWM) is reported. Passes run
round robin (every measurement once, then again), so a slow spell of the machine hits them alike.

python -m benchmarks.convert [--workdir DIR] [--passes N] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import ml_dtypes
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llama_shared.checkpoints import write_checkpoint  # noqa: E402
from llama_shared.config import LlamaConfig  # noqa: E402

BLOCK = 16 * 2**20
CHILD = """
import json, sys, time
import orbax.checkpoint, torch  # imported before the clock starts: a fixed cost, not reading
from llama_twin.conversion import convert

def peak_rss():  # VmHWM: this process's own high-water mark (ru_maxrss would include the parent's at fork)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

rss_before = peak_rss()
start = time.perf_counter()
convert(sys.argv[1], sys.argv[2], sys.argv[3], num_shards=int(sys.argv[4]), progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, "rss_after_imports": rss_before, "peak_rss": peak_rss()}))
"""


def hf_specs(config: LlamaConfig) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    bf16 = np.dtype(ml_dtypes.bfloat16)
    specs = {"model.embed_tokens.weight": ((v, h), bf16)}
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}."
        specs.update({p + "self_attn.q_proj.weight": ((q, h), bf16), p + "self_attn.k_proj.weight": ((kv, h), bf16),
                      p + "self_attn.v_proj.weight": ((kv, h), bf16), p + "self_attn.o_proj.weight": ((h, q), bf16),
                      p + "mlp.gate_proj.weight": ((i, h), bf16), p + "mlp.up_proj.weight": ((i, h), bf16),
                      p + "mlp.down_proj.weight": ((h, i), bf16), p + "input_layernorm.weight": ((h,), bf16),
                      p + "post_attention_layernorm.weight": ((h,), bf16)})
    specs["model.norm.weight"] = ((h,), bf16)
    return specs


def random_bfloat16(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random finite bfloat16 values in (-1, 1), made from random bits (no float32 detour)."""
    bits = rng.integers(0, 0x3F80, size=shape, dtype=np.uint16) | (rng.integers(0, 2, shape, np.uint16) << 15)
    return bits.view(ml_dtypes.bfloat16)


def write_random_checkpoint(folder: str, config: LlamaConfig) -> None:
    specs = hf_specs(config)
    rng = np.random.default_rng(0)
    write_checkpoint(folder, specs, ((k, random_bfloat16(s, rng)) for k, (s, _) in specs.items()))
    config.replace(torch_dtype="bfloat16").save_pretrained(folder)


def files_under(folder: str) -> list[str]:
    return [os.path.join(root, n) for root, _, names in os.walk(folder) for n in names]


def drop_page_cache(folder_or_file: str) -> None:
    """Write back and evict the page cache of every file (no root needed: POSIX_FADV_DONTNEED)."""
    paths = [folder_or_file] if os.path.isfile(folder_or_file) else files_under(folder_or_file)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def size_of(folder: str) -> int:
    return sum(os.path.getsize(p) for p in files_under(folder))


def start_cold(workdir: str) -> None:
    """Write back every dirty page on the machine and drop the page cache of every file in the
    benchmark's folder: each measurement starts with its source on disk and with the memory that
    earlier steps' files held free again (with the page cache full, reclaiming it made the same
    conversions 2-4x slower on the dev box)."""
    os.sync()
    drop_page_cache(workdir)


def disk_read_speed(path: str, size: int, drop_behind: bool = True) -> float:
    """Bytes per second of a 16 MB-block sequential read of a fresh file of the given size.

    drop_behind evicts each block from the page cache once read, so that the figure is the disk's
    and not how fast the page cache can grow: on a VM that returns free memory to its host, a plain
    read into a cold page cache ran at 0.5-0.75 GB/s where this one read at 1.6-2.2."""
    if not os.path.exists(path) or os.path.getsize(path) != size:
        chunk = os.urandom(BLOCK)
        with open(path, "wb") as f:
            for _ in range(size // BLOCK):
                f.write(chunk)
            f.write(chunk[:size % BLOCK])
    start_cold(os.path.dirname(path))
    buffer = bytearray(BLOCK)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        offset = 0
        while n := f.readinto(buffer):
            if drop_behind:
                os.posix_fadvise(f.fileno(), offset, n, os.POSIX_FADV_DONTNEED)
            offset += n
    return size / (time.perf_counter() - start)


def disk_copy_speed(path: str, size: int) -> float:
    """Bytes per second of a 16 MB-block read of the reference file written to a new file beside it."""
    start_cold(os.path.dirname(path))
    copy = path + ".copy"
    buffer = bytearray(BLOCK)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as src, open(copy, "wb", buffering=0) as dst:
        while n := src.readinto(buffer):
            dst.write(memoryview(buffer)[:n])
    seconds = time.perf_counter() - start
    os.remove(copy)
    return size / seconds


def disk_duplex_speed(path: str, size: int) -> float:
    """Bytes per second of the reference file read in 16 MB blocks (each dropped from the page cache
    once read, as in disk_read_speed) by one thread while another writes each block to a new file
    with O_DIRECT (whole blocks only; page-aligned buffers, as O_DIRECT needs)."""
    start_cold(os.path.dirname(path))
    copy = path + ".duplex"
    blocks = size // BLOCK
    free: queue.Queue = queue.Queue()
    full: queue.Queue = queue.Queue()
    for _ in range(4):
        free.put(mmap.mmap(-1, BLOCK))

    def read() -> None:
        try:
            with open(path, "rb", buffering=0) as src:
                for block in range(blocks):
                    buffer = free.get()
                    src.readinto(buffer)
                    os.posix_fadvise(src.fileno(), block * BLOCK, BLOCK, os.POSIX_FADV_DONTNEED)
                    full.put(buffer)
        except OSError as error:  # handed to the writing thread, which raises it
            full.put(error)

    try:
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except OSError as e:
        raise SystemExit(f"{os.path.dirname(path)} does not take O_DIRECT writes ({e}); "
                         f"pass --workdir on a disk-backed file system") from None
    reader = threading.Thread(target=read)
    start = time.perf_counter()
    reader.start()
    try:
        for _ in range(blocks):
            buffer = full.get()
            if isinstance(buffer, OSError):
                raise buffer
            os.write(fd, buffer)
            free.put(buffer)
        seconds = time.perf_counter() - start
    finally:
        reader.join()
        os.close(fd)
        os.remove(copy)
    return blocks * BLOCK / seconds


def timed_conversion(src: str, dst: str, to: str, num_shards: int = 1) -> dict:
    shutil.rmtree(dst, ignore_errors=True)
    start_cold(os.path.dirname(src))
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", CHILD, src, dst, to, str(num_shards)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="folder for the checkpoints (default: a temporary folder, removed after)")
    parser.add_argument("--passes", type=int, default=3, help="passes per measurement; the best is kept")
    parser.add_argument("--only", nargs="*", help="conversions to run, by name (e.g. 'hf -> flax'); default all")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="convert-bench-")
    os.makedirs(workdir, exist_ok=True)
    config = LlamaConfig.from_preset("llama-3.2-1b")
    hf = os.path.join(workdir, "hf")
    if not os.path.exists(os.path.join(hf, "config.json")):
        write_random_checkpoint(hf, config)
    specs = hf_specs(config)
    largest = max(int(np.prod(s)) * d.itemsize for s, d in specs.values())
    budget = largest + 1.5e9
    size = size_of(hf)
    print(f"checkpoint: {config.num_parameters() / 1e9:.2f}B parameters, {size / 1e9:.2f} GB bfloat16, "
          f"largest tensor {largest / 1e9:.2f} GB; RSS budget {budget / 1e9:.2f} GB")
    runs = [("hf -> meta", hf, os.path.join(workdir, "meta"), "meta"),
            ("meta -> hf", os.path.join(workdir, "meta"), os.path.join(workdir, "hf-from-meta"), "hf"),
            ("hf -> hf", hf, os.path.join(workdir, "hf-copy"), "hf"),
            ("hf -> flax", hf, os.path.join(workdir, "flax"), "flax"),
            ("flax -> hf", os.path.join(workdir, "flax"), os.path.join(workdir, "hf-from-flax"), "hf")]
    runs = [r for r in runs if not args.only or r[0] in args.only]
    reference = os.path.join(workdir, "disk-reference.bin")
    disk, cached_read, copy, duplex, best = 0.0, 0.0, 0.0, 0.0, {}
    for _ in range(args.passes):
        disk = max(disk, disk_read_speed(reference, size))
        cached_read = max(cached_read, disk_read_speed(reference, size, drop_behind=False))
        copy = max(copy, disk_copy_speed(reference, size))
        duplex = max(duplex, disk_duplex_speed(reference, size))
        for name, src, dst, to in runs:
            result = timed_conversion(src, dst, to)
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = {**result, "read": size_of(src) / result["seconds"]}
    print(f"disk sequential read: {disk / 1e9:.2f} GB/s (into the page cache: {cached_read / 1e9:.2f}); "
          f"copy (read + write): {copy / 1e9:.2f} GB/s; duplex (read while writing to disk): "
          f"{duplex / 1e9:.2f} GB/s (best of {args.passes})")
    print(f"{'conversion':<12} {'seconds':>8} {'read GB/s':>10} {'vs disk':>8} {'vs copy':>8} {'vs duplex':>10} "
          f"{'peak RSS GB':>12} {'vs budget':>10} {'RSS after imports':>18}")
    for name, *_ in runs:
        r = best[name]
        print(f"{name:<12} {r['seconds']:>8.1f} {r['read'] / 1e9:>10.2f} {r['read'] / disk:>8.2f} "
              f"{r['read'] / copy:>8.2f} {r['read'] / duplex:>10.2f} {r['peak_rss'] / 1e9:>12.2f} "
              f"{r['peak_rss'] / budget:>10.2f} "
              f"{r['rss_after_imports'] / 1e9:>18.2f}")
    if not args.workdir:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
