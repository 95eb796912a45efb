#!/usr/bin/env bash
# One device call: transformers' anchors and both twins at the Llama-2-7B shape, bf16, same GPU.
# Before the call, in the repository root (see ../shared/bench/README.md):
#   echo /.anchors/ >> .git/info/exclude; cp -r ../shared/bench .anchors
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     transformers==4.57.6 tokenizers==0.22.1 huggingface_hub==0.36.0
# then run: bash benchmarks/gpu/run.sh   (carry: .anchors, .whl). SIZE=tiny dry-runs it on a CPU.
set -u
OUT=${OUT:-/tmp/decode_gpu}; mkdir -p "$OUT"; export OUT
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
PY=${PYTHON:-python3}
stage() { echo "=== $1"; shift; timeout "${STAGE_TIMEOUT:-240}" "$@" 2>&1 | grep -v -i "warning" | tail -n 40; }
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
stage "twin flax" $PY -m benchmarks.gpu.decode_gpu --backend flax
stage "twin torch" $PY -m benchmarks.gpu.decode_gpu --backend torch
if [ -d .anchors ]; then
  stage "anchor transformers torch" env ONLY=ceilings,build_7b,prefill_7b_b1_2048,decode_7b_b1_eager_dynamic,decode_7b_b16_eager_dynamic,decode_7b_b1_static_compiled $PY .anchors/gpu_anchor_hf_torch.py
  if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    stage "anchor transformers flax" env ONLY=build_7b,prefill_7b_b1,decode_7b_b1,decode_7b_b16 PYTHONPATH=/tmp/site $PY .anchors/gpu_anchor_hf_flax.py
  fi
fi
ls -l "$OUT"
