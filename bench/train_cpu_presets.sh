#!/usr/bin/env bash
# Train every CPU preset on ../shared/data: baseline (head none), MonoCon (monotonic), std-MLP (mlp) and the
# Matryoshka comparator (std-MLP head trained with SupCon summed over nested prefixes).
# Vision baselines train the encoder from scratch; the head runs start from the baseline's encoder.
# Usage: bash bench/train_cpu_presets.sh [RUNS_DIR]   (default: runs/cpu-presets)
set -euo pipefail
runs=${1:-runs/cpu-presets}
mkdir -p "$runs"
log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$runs/timings.txt"; }
train() {  # name, then train options
  local name=$1; shift
  if [ -f "$runs/$name/summary.json" ]; then log "skip $name (done)"; return; fi
  local t0=$SECONDS
  if [ -f "$runs/$name/last.pt" ]; then monocon-edge train --resume "$runs/$name"
  else rm -rf "${runs:?}/$name"; monocon-edge train "$@" --out "$runs/$name"; fi
  log "$name $((SECONDS - t0)) s"
}
for head in none monotonic mlp; do
  train "nli-pairs-$head" --preset nli-pairs --head "$head"
done
train "nli-pairs-matryoshka" --preset nli-pairs --loss matryoshka
for preset in tiny-imagenet-100 cifar10-subset; do
  train "$preset-none" --preset "$preset" --head none
  for head in monotonic mlp; do
    train "$preset-$head" --preset "$preset" --head "$head" --init-from "$runs/$preset-none"
  done
  train "$preset-matryoshka" --preset "$preset" --loss matryoshka --init-from "$runs/$preset-none"
done
