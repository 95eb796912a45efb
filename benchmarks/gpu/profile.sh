#!/usr/bin/env bash
# One device call: per-kernel tables of a batch-1 decode step (Llama-2-7B shape, bf16) for both
# twins and transformers' Flax generate on the same weights, with the trials named below measured
# beside the twin as it is; the optimized HLO of both Flax decode loops lands under $OUT.
# Carry .whl (transformers 4.57.6, see run.sh); run: bash benchmarks/gpu/profile.sh
set -u
source "$(dirname "$0")/stage.sh"

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null
install_flax_anchor
[ -n "${SKIP_FLAX:-}" ] || stage "profile flax" 170 env PYTHONPATH=/tmp/site \
  $PY -m benchmarks.gpu.profile_decode --backend flax
stage "profile torch" ${TORCH_CAP_S:-220} \
  $PY -m benchmarks.gpu.profile_decode --backend torch --trial efficient_attention --trial max_autotune
ls -l "$OUT"
