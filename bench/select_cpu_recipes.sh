#!/usr/bin/env bash
# Recipe selection for the CPU presets, on the SELECTION split only (issue 11): every option of `train` that
# could fix the monotonic head (monotone input standardisation, similarity distillation) is tried with the same
# budget on every head it applies to, and bench/selection_table.py tabulates the selection-split figures into
# bench/results/selection-*.{md,json}. The report split is never read here.
# Usage: bash bench/select_cpu_recipes.sh [RUNS_DIR] [text|vision|all]   (default: runs/select, all)
# Vision needs the pre-trained encoder of bench/train_cpu_presets.sh ($PRETRAINED, default
# runs/cpu-presets/tiny-imagenet-pretrain).
set -euo pipefail
runs=${1:-runs/select}
what=${2:-all}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$runs"
source "$(dirname "$0")/train_lib.sh"
if [ "$what" = text ] || [ "$what" = all ]; then
  train nli-none --preset nli-pairs --head none
  # Step 1, MonoCon alone: the paper's head, with the monotone standardisation, with similarity distillation
  # (weights 1, 20, 100: the SupCon loss is O(1-5), the distillation term O(0.01-0.1)).
  train nli-monotonic --preset nli-pairs --head monotonic --no-head-standardize --distill 0
  train nli-monotonic-std --preset nli-pairs --head monotonic --head-standardize --distill 0
  for w in 1 20 100; do
    train "nli-monotonic-distill$w" --preset nli-pairs --head monotonic --no-head-standardize --distill "$w"
  done
  # ... and more negatives per anchor (larger batches, same epochs and LRs)
  for b in 256 512; do
    train "nli-monotonic-batch$b" --preset nli-pairs --head monotonic --batch-size "$b"
  done
  # Step 2, the other heads with the recipe step 1 kept as the preset's default (the same for every head).
  train nli-mlp --preset nli-pairs --head mlp
  train nli-matryoshka --preset nli-pairs --loss matryoshka
  python3 "$here/selection_table.py" "$runs"/nli-* --out "$here/results/selection-nli-pairs"
fi
if [ "$what" = vision ] || [ "$what" = all ]; then
  pre=${PRETRAINED:-runs/cpu-presets/tiny-imagenet-pretrain}
  train tin-none --preset tiny-imagenet-100 --head none --init-from "$pre"
  # Step 1, at the warm-up LR 3e-3 for every head: the monotone standardisation (raw = without), distillation.
  train tin-monotonic-raw --preset tiny-imagenet-100 --head monotonic --no-head-standardize --lr-warmup 3e-3 \
    --init-from "$pre"
  train tin-monotonic-lrw3e-3 --preset tiny-imagenet-100 --head monotonic --lr-warmup 3e-3 --init-from "$pre"
  train tin-monotonic-distill20 --preset tiny-imagenet-100 --head monotonic --distill 20 --lr-warmup 3e-3 \
    --init-from "$pre"
  train tin-mlp-lrw3e-3 --preset tiny-imagenet-100 --head mlp --lr-warmup 3e-3 --init-from "$pre"
  train tin-matryoshka-lrw3e-3 --preset tiny-imagenet-100 --loss matryoshka --lr-warmup 3e-3 --init-from "$pre"
  # Step 2, the head warm-up LR: {3e-3, 1e-2} for every head (and 1e-3 for the std-MLP). Squared weights start
  # tiny (w^2 ~ 1e-3), so the monotonic head moves slowly at 3e-3. 1e-2 is best for every head on Recall@1 at 16
  # dims, so it is the preset's default (training/config.py) and these are the preset runs.
  train tin-mlp-lrw1e-3 --preset tiny-imagenet-100 --head mlp --lr-warmup 1e-3 --init-from "$pre"
  train tin-monotonic --preset tiny-imagenet-100 --head monotonic --init-from "$pre"
  train tin-mlp --preset tiny-imagenet-100 --head mlp --init-from "$pre"
  train tin-matryoshka --preset tiny-imagenet-100 --loss matryoshka --init-from "$pre"
  # Step 3: 1e-2 was the top of step 2's grid (and MonoCon gained most, 0.152 -> 0.173), so the grid goes one
  # step further for every head: 3e-2. Step 4: the head LR of the end-to-end epochs (1e-3, with the encoder at
  # 5e-4) at 3e-3 for every head: the squared weights move slowly at a given LR, the reason step 2 helped MonoCon
  # most. Neither changes the preset (bench/results/selection-tiny-imagenet-100.md).
  for head in monotonic mlp matryoshka; do
    if [ "$head" = matryoshka ]; then model=(--loss matryoshka); else model=(--head "$head"); fi
    train "tin-$head-lrw3e-2" --preset tiny-imagenet-100 "${model[@]}" --lr-warmup 3e-2 --init-from "$pre"
    train "tin-$head-lrh3e-3" --preset tiny-imagenet-100 "${model[@]}" --lr-head 3e-3 --init-from "$pre"
    # Step 5: similarity distillation (weight 20) at the preset's LRs, for every head (step 1 tried it on MonoCon
    # alone, at the old warm-up LR). MonoCon +0.4 points at 16 dims (under one standard error), the rivals lose: not adopted.
    train "tin-$head-distill20-lrw1e-2" --preset tiny-imagenet-100 "${model[@]}" --distill 20 --init-from "$pre"
    # Step 6, the co-adaptation budget (the paper's mechanism: the encoder adapts to the head): twice the
    # end-to-end epochs (6 -> 12, the baseline too), or the encoder LR doubled (5e-4 -> 1e-3). Step 7: the head
    # on the raw encoder output (no standardisation) at the preset's warm-up LR 1e-2 (step 1 tried it at 3e-3).
    train "tin-$head-e2e12" --preset tiny-imagenet-100 "${model[@]}" --epochs 22 --init-from "$pre"
    train "tin-$head-lre1e-3" --preset tiny-imagenet-100 "${model[@]}" --lr-encoder 1e-3 --init-from "$pre"
    train "tin-$head-raw-lrw1e-2" --preset tiny-imagenet-100 "${model[@]}" --no-head-standardize --init-from "$pre"
    # Step 8: SupCon temperature 0.05 instead of 0.1 (the monotonic head's embeddings share a common direction, so
    # their cosines span a narrower range; a lower temperature could make up for it).
    train "tin-$head-tau0.05" --preset tiny-imagenet-100 "${model[@]}" --temperature 0.05 --init-from "$pre"
    # Step 9: the heads' LeakyReLU slope 0.3 below 0 (the text preset's, chosen by bench/select_text_seeded.sh).
    train "tin-$head-slope0.3" --preset tiny-imagenet-100 "${model[@]}" --negative-slope 0.3 --init-from "$pre"
    # Step 10: twice the head warm-up on cached features (10 -> 20 epochs; the end-to-end 6 unchanged): the
    # squared weights start tiny and the monotonic head was still improving at the end of its warm-up.
    train "tin-$head-warmup20" --preset tiny-imagenet-100 "${model[@]}" --warmup-epochs 20 --epochs 26 \
      --init-from "$pre"
    # Step 11: early stopping on the selection 5-NN accuracy at 16 dims (`--select-dims 16`: PCA, prefix for
    # Matryoshka), the width the artifacts ship at, instead of at full width. Its reference (ref11) is the preset
    # trained again by the same code: the tin-HEAD runs above predate changes to the end-to-end path.
    train "tin-$head-ref11" --preset tiny-imagenet-100 "${model[@]}" --init-from "$pre"
    train "tin-$head-select16" --preset tiny-imagenet-100 "${model[@]}" --select-dims 16 --init-from "$pre"
  done
  train tin-none-tau0.05 --preset tiny-imagenet-100 --head none --temperature 0.05 --init-from "$pre"
  train tin-none-e2e12 --preset tiny-imagenet-100 --head none --epochs 12 --init-from "$pre"
  train tin-none-lre1e-3 --preset tiny-imagenet-100 --head none --lr-encoder 1e-3 --init-from "$pre"
  python3 "$here/selection_table.py" "$runs"/tin-* --out "$here/results/selection-tiny-imagenet-100"
  python3 "$here/selection_table.py" "$runs"/tin-*-{ref11,select16} --out "$here/results/selection-tiny-imagenet-100-select16"
fi
