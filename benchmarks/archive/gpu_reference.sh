#!/usr/bin/env bash
# The leased H200 calls (device tool): the CIFAR archives travel in .data/ (ignored by git);
# results land in $OUT (the device's return folder) or benchmarks/results/gpu.
#   call 1, the 500-epoch run:     bash benchmarks/archive/gpu_reference.sh            (carry: .data)
#   call 2, step profile + grid:   bash benchmarks/archive/gpu_reference.sh --ablation --deadline-s 280
#   CPU check of either:           add --smoke
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" SIMCLR_EMBED_CACHE=/tmp/simclr-cache
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
if [[ " $* " == *" --ablation "* ]]; then
  if [[ " $* " == *" --smoke "* ]]; then size=(--batch-size 64 --train-per-class 13)
  else size=(--batch-size 512 --train-per-class 1000 --compile --peak-tflops 989); fi
  python3 -m benchmarks.train profile --data .data/cifar10 "${size[@]}" \
    --out "$out/step_profile.json" 2>&1 | tee "$out/step_profile_log.txt"
fi
python3 -m benchmarks.archive.gpu_reference --data .data/cifar10 --out "$out" "$@" 2>&1 \
  | tee -a "$out/log.txt"
ls -la "$out"
