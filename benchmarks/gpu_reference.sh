#!/usr/bin/env bash
# One leased H200 call (device tool): the CIFAR archives travel in .data/ (ignored by git);
# results land in $OUT (the device's return folder) or benchmarks/results/gpu.
#   device run:  bash benchmarks/gpu_reference.sh          (carry: .data)
#   CPU check:   bash benchmarks/gpu_reference.sh --smoke
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD" SIMCLR_EMBED_CACHE=/tmp/simclr-cache
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -m benchmarks.gpu_reference --data .data/cifar10 --out "$out" "$@" 2>&1 \
  | tee "$out/log.txt"
ls -la "$out"
