#!/usr/bin/env bash
# Second recipe-selection grid for the text preset (nli-pairs), on the SELECTION split only (issue 11, item 4):
# the options bench/select_cpu_recipes.sh did not try — the identity head initialisation (`--head-init identity`,
# alone and with distillation), the head learning rate, the epoch budget and the SupCon temperature. Every option
# that applies to a trained head is given with the same budget to MonoCon, std-MLP and Matryoshka (the baseline
# trains nothing); the 16-epoch / lr 2e-3 / tau 0.05 runs of the current preset are the reference rows.
# bench/selection_table.py writes bench/results/selection-nli-pairs-2.{md,json}. The report split is never read.
# Each run takes ~1 min on the 2-core machine with the MiniLM features cached (~/.cache/monocon-edge/features).
# Usage: bash bench/select_text_recipes_2.sh [RUNS_DIR]   (default: runs/select-2)
set -euo pipefail
runs=${1:-runs/select-2}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$runs"
source "$here/train_lib.sh"
# The reference rows: the current preset for the four models (the same commands as select_cpu_recipes.sh).
train nli-none --preset nli-pairs --head none
train nli-monotonic --preset nli-pairs --head monotonic
train nli-mlp --preset nli-pairs --head mlp
train nli-matryoshka --preset nli-pairs --loss matryoshka
# Options for every trained head (--loss matryoshka trains the std-MLP head with the Matryoshka loss).
for head in monotonic mlp matryoshka; do
  if [ "$head" = matryoshka ]; then model=(--loss matryoshka); else model=(--head "$head"); fi
  train "nli-$head-identity" --preset nli-pairs "${model[@]}" --head-init identity
  train "nli-$head-tau0.1" --preset nli-pairs "${model[@]}" --temperature 0.1
  train "nli-$head-lr5e-3" --preset nli-pairs "${model[@]}" --lr-head 5e-3
  train "nli-$head-epochs32" --preset nli-pairs "${model[@]}" --epochs 32
done
# MonoCon only, where the options above did not win for it outright: the identity head barely moves at the
# preset's lr 2e-3 (its squared weights start near 0 off the diagonal), so higher head LRs, and identity with
# distillation; a lower head LR and temperature, and the two pairings of options that each helped one figure.
train nli-monotonic-identity-distill20 --preset nli-pairs --head monotonic --head-init identity --distill 20
for lr in 1e-2 2e-2 5e-2; do
  train "nli-monotonic-identity-lr$lr" --preset nli-pairs --head monotonic --head-init identity --lr-head "$lr"
done
train nli-monotonic-lr1e-3 --preset nli-pairs --head monotonic --lr-head 1e-3
train nli-monotonic-tau0.02 --preset nli-pairs --head monotonic --temperature 0.02
train nli-monotonic-tau0.1-epochs32 --preset nli-pairs --head monotonic --temperature 0.1 --epochs 32
train nli-monotonic-lr1e-3-epochs32 --preset nli-pairs --head monotonic --lr-head 1e-3 --epochs 32
# The reference runs of the three trained heads with two other seeds: the seed-to-seed spread that a difference
# must exceed.
for seed in 1 2; do
  train "nli-monotonic-seed$seed" --preset nli-pairs --head monotonic --seed "$seed"
  train "nli-mlp-seed$seed" --preset nli-pairs --head mlp --seed "$seed"
  train "nli-matryoshka-seed$seed" --preset nli-pairs --loss matryoshka --seed "$seed"
done
python3 "$here/selection_table.py" "$runs"/nli-* --out "$here/results/selection-nli-pairs-2"
