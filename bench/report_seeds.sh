#!/usr/bin/env bash
# The CPU presets' four models with more training seeds, on the SAME data split as the seed-42 runs of
# bench/train_cpu_presets.sh (--split-seed 42: no seed's report part is another seed's selection part), then
# bench/seed_table.py: report-split mean ± standard error per model over the seeds, and MonoCon's difference to
# each model paired by seed -> bench/results/seeds-<preset>.{md,json}. Nothing here makes a choice: the recipes
# are the presets' as they stand; a single seed's figure moves by about as much as the heads differ.
# Usage: bash bench/report_seeds.sh [RUNS_DIR] [text|vision|all]   (default: runs/cpu-presets, all)
# SEEDS="1 2" by default; the vision runs start from RUNS_DIR/tiny-imagenet-pretrain, as the presets do.
set -euo pipefail
runs=${1:-runs/cpu-presets}
what=${2:-all}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$runs"
source "$here/train_lib.sh"
seeds=(${SEEDS:-1 2})
presets=()
{ [ "$what" = text ] || [ "$what" = all ]; } && presets+=(nli-pairs)
{ [ "$what" = vision ] || [ "$what" = all ]; } && presets+=(tiny-imagenet-100)
for preset in "${presets[@]}"; do
  init=()
  [ "$preset" = nli-pairs ] || init=(--init-from "$runs/tiny-imagenet-pretrain")
  for seed in "${seeds[@]}"; do
    for model in none monotonic mlp matryoshka; do
      if [ "$model" = matryoshka ]; then opts=(--loss matryoshka); else opts=(--head "$model"); fi
      train "$preset-$model-seed$seed" --preset "$preset" "${opts[@]}" "${init[@]}" --seed "$seed" --split-seed 42
    done
  done
  models=()
  for model in none monotonic mlp matryoshka; do
    models+=("$runs/$preset-$model")
    for seed in "${seeds[@]}"; do models+=("$runs/$preset-$model-seed$seed"); done
  done
  python3 "$here/seed_table.py" "${models[@]}" --out "$here/results/seeds-$preset"
done
