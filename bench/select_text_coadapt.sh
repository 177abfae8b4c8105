#!/usr/bin/env bash
# Third recipe-selection grid for the text preset (nli-pairs), on the SELECTION split only (issue 11, item 3):
# co-adaptation of MiniLM's top transformer layer with the head (`--train-top-layers 1`), the paper's mechanism
# (it fine-tunes MiniLM end to end; the preset keeps it frozen). Recipe: the head warms up 10 epochs on cached
# features at the preset's head LR (2e-3), then 6 epochs train the head (2e-3, cosine) and the top layer
# (encoder LR 1e-5; MonoCon also 3e-5) together. The control row of each head runs the same schedule with the encoder
# frozen, so that the difference is the co-adaptation alone. The same runs for MonoCon, std-MLP and Matryoshka
# (same budget); the preset's runs of bench/select_text_recipes_2.sh (REFERENCE_RUNS_DIR/nli-*) join the table.
# bench/selection_table.py writes bench/results/selection-nli-pairs-coadapt.{md,json}; the report split is never
# read. A co-adapted run takes ~12-20 min at one thread on the 2-core machine (two layers would double it); the
# lower layers' token states are computed once (~5 min) into the feature cache.
# Usage: bash bench/select_text_coadapt.sh [RUNS_DIR] [REFERENCE_RUNS_DIR]   (defaults: runs/select-3, runs/select-2)
#   HEADS="monotonic mlp matryoshka" picks the heads (to run lanes in parallel); TABLE=0 skips the table.
set -euo pipefail
runs=${1:-runs/select-3}
reference=${2:-runs/select-2}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$runs"
source "$here/train_lib.sh"
coadapt=(--preset nli-pairs --epochs 16 --warmup-epochs 10 --lr-warmup 2e-3 --train-encoder)
for head in ${HEADS:-monotonic mlp matryoshka}; do
  if [ "$head" = matryoshka ]; then model=(--loss matryoshka); else model=(--head "$head"); fi
  train "nli-$head-w10" --preset nli-pairs --epochs 16 --warmup-epochs 10 --lr-warmup 2e-3 "${model[@]}"
  train "nli-$head-top1-lr1e-5" "${coadapt[@]}" "${model[@]}" --train-top-layers 1 --lr-encoder 1e-5
done
# MonoCon at a higher encoder LR: the co-adaptation is adopted only if it raises MonoCon's Spearman and pair
# Recall@1 at 16 dims without lowering full-width Spearman; neither LR does, so the rivals were not run at 3e-5.
if [[ " ${HEADS:-monotonic} " == *" monotonic "* ]]; then
  train nli-monotonic-top1-lr3e-5 "${coadapt[@]}" --head monotonic --train-top-layers 1 --lr-encoder 3e-5
fi
if [ "${TABLE:-1}" = 1 ]; then
  python3 "$here/selection_table.py" "$reference"/nli-{none,monotonic,mlp,matryoshka} "$runs"/nli-* \
    --out "$here/results/selection-nli-pairs-coadapt"
fi
