#!/usr/bin/env bash
# One device call: per-kernel tables of a batch-1 decode step (Llama-2-7B shape, bf16) for both
# twins and transformers' Flax generate on the same weights, with the trials named below measured
# beside the twin as it is; the optimized HLO of both Flax decode loops lands under $OUT.
# Carry .whl (transformers 4.57.6, see run.sh); run: bash benchmarks/gpu/profile.sh
set -u
source "$(dirname "$0")/stage.sh"

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null
install_flax_anchor
stage "profile flax" 170 env PYTHONPATH=/tmp/site \
  $PY -m benchmarks.gpu.profile_decode --backend flax --trial sum_attention
stage "profile flax, cuBLAS for every dot" 90 env PYTHONPATH=/tmp/site XLA_FLAGS=--xla_gpu_enable_triton_gemm=false \
  $PY -m benchmarks.gpu.profile_decode --backend flax --tag flax_no_triton_gemm
stage "profile torch" 220 $PY -m benchmarks.gpu.profile_decode --backend torch --trial coordinate_descent
ls -l "$OUT"
