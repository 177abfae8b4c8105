#!/usr/bin/env bash
# Train every CPU preset on ../shared/data with the protocol of issue 11:
# - text (nli-pairs): baseline (frozen MiniLM + PCA), MonoCon, std-MLP, Matryoshka; selection on STS-B train and
#   half the held-out pairs, report on STS-B dev and the other half.
# - vision: pre-train the small CNN on the 100 Tiny ImageNet classes NOT in tiny-imagenet-100
#   (tiny-imagenet-pretrain, the offline stand-in for ImageNet weights); then baseline, MonoCon, std-MLP and
#   Matryoshka all start from that encoder (--init-from) with the same budget on tiny-imagenet-100 (heads: warm-up
#   with the encoder frozen, then end to end with differential LRs; baseline: the encoder alone, same end-to-end
#   epochs); selection on half the held-out images, report on the other half (queries against the train gallery).
# CIFAR10=1 also runs cifar10-subset from the same pre-trained encoder.
# Usage: bash bench/train_cpu_presets.sh [RUNS_DIR]   (default: runs/cpu-presets)
set -euo pipefail
runs=${1:-runs/cpu-presets}
mkdir -p "$runs"
source "$(dirname "$0")/train_lib.sh"
for head in none monotonic mlp; do
  train "nli-pairs-$head" --preset nli-pairs --head "$head"
done
train "nli-pairs-matryoshka" --preset nli-pairs --loss matryoshka
train tiny-imagenet-pretrain --preset tiny-imagenet-pretrain --head none
presets=(tiny-imagenet-100)
[ "${CIFAR10:-0}" = 1 ] && presets+=(cifar10-subset)
for preset in "${presets[@]}"; do
  for head in none monotonic mlp; do
    train "$preset-$head" --preset "$preset" --head "$head" --init-from "$runs/tiny-imagenet-pretrain"
  done
  train "$preset-matryoshka" --preset "$preset" --loss matryoshka --init-from "$runs/tiny-imagenet-pretrain"
done
