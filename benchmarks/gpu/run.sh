#!/usr/bin/env bash
# One device call: both twins and transformers' anchors at the Llama-2-7B shape, bf16, same GPU,
# then the issue-6 train step while time remains (caps from the first run, on an H200). Each stage is capped, and the whole run ends inside
# BUDGET_S seconds, so a slow stage costs only itself; every stage writes its JSON under $OUT.
# Before the call, in the repository root (see ../shared/bench/README.md):
#   echo /.anchors/ >> .git/info/exclude; cp -r ../shared/bench .anchors
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     transformers==4.57.6 tokenizers==0.22.1 huggingface_hub==0.36.0
# then run: bash benchmarks/gpu/run.sh   (carry: .anchors, .whl). SIZE=tiny dry-runs the twins on a CPU.
set -u
source "$(dirname "$0")/stage.sh"

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null
$PY -c "import jax, flax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__)"
stage "twin flax" 100 $PY -m benchmarks.gpu.decode_gpu --backend flax
if [ -d .anchors ] && install_flax_anchor; then
  stage "anchor transformers flax" 80 env ONLY=build_7b,decode_7b_b1,decode_7b_b16 PYTHONPATH=/tmp/site \
    $PY .anchors/gpu_anchor_hf_flax.py
fi
stage "twin torch" 170 $PY -m benchmarks.gpu.decode_gpu --backend torch
if [ -d .anchors ]; then
  # This anchor has no stage filter and skips a stage its own DEADLINE_S cannot fit: let it run its
  # stages in order (its static-cache compiled decode is last) and let the cap end it.
  stage "anchor transformers torch" 120 env DEADLINE_S=400 $PY .anchors/gpu_anchor_hf_torch.py
fi
stage "train step, Llama-3.2-1B shape" 100 env ONLY=bf16 $PY -m benchmarks.gpu.train_gpu
stage "LoRA / QLoRA step against full, Llama-3.2-1B shape" 240 $PY -m benchmarks.gpu.lora_gpu
ls -l "$OUT"
