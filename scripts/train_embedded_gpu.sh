#!/usr/bin/env bash
# The command that trained the shipped embedded model (one H100, ~7 minutes of training).
# Usage: scripts/train_embedded_gpu.sh OUT_DIR TOKENIZER_DIR
set -euo pipefail
out=${1:-runs/embedded}; tok=${2:-src/dpad/assets/embedded}
python3 -m dpad.train --out "$out" --tokenizer "$tok" --device cuda --seed 0 \
  --dim 256 --layers 6 --heads 8 --hidden 768 --batch-tokens 65536 --lr 1e-3 --warmup 300 \
  --max-steps 1000000 --time-limit-min 7.2 --pool-size 400000 --short-frac 0.6 --long-max 2100 \
  --eval-every-s 60 --eval-n 256 --eval-gen 128 --final-test-n 500 --final-test-gen 256 --ckpt-every-s 100000
