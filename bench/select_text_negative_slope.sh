#!/usr/bin/env bash
# Fifth text grid (issue 11), on the SELECTION split only: the head's LeakyReLU slope below 0 (`--negative-slope`,
# 0.01 by default as in PyTorch; any slope >= 0 keeps the activation non-decreasing, so the head stays monotone):
# 0.1, 0.3 and 0.5 for every trained head, three seeds each on one split (--split-seed 42). The preset rows are those of
# bench/select_text_hard_negatives.sh (same RUNS_DIR: they are trained here if missing).
# bench/selection_table.py writes bench/results/selection-nli-pairs-slope.{md,json}. The report split is never read.
# Usage: bash bench/select_text_negative_slope.sh [RUNS_DIR]   (default: runs/select-4)
set -euo pipefail
runs=${1:-runs/select-4}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$runs"
source "$here/train_lib.sh"
for seed in 42 1 2; do
  for head in monotonic mlp matryoshka; do
    if [ "$head" = matryoshka ]; then model=(--loss matryoshka); else model=(--head "$head"); fi
    train "nli-$head-seed$seed" --preset nli-pairs "${model[@]}" --seed "$seed" --split-seed 42
    for slope in 0.1 0.3 0.5; do
      train "nli-$head-slope$slope-seed$seed" --preset nli-pairs "${model[@]}" --negative-slope "$slope" \
        --seed "$seed" --split-seed 42
    done
  done
done
runs_of=()
for head in monotonic mlp matryoshka; do
  runs_of+=("$runs/nli-$head-seed"* "$runs/nli-$head-slope"*)
done
python3 "$here/selection_table.py" "${runs_of[@]}" --out "$here/results/selection-nli-pairs-slope"
