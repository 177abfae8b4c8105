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
log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$runs/timings.txt"; }
train() {  # name, then train options
  local name=$1; shift
  if [ -f "$runs/$name/summary.json" ]; then log "skip $name (done)"; return; fi
  local t0=$SECONDS
  rm -rf "${runs:?}/$name"
  monocon-edge train "$@" --out "$runs/$name"
  log "$name $((SECONDS - t0)) s"
}
if [ "$what" = text ] || [ "$what" = all ]; then
  train nli-none --preset nli-pairs --head none
  for head in monotonic mlp matryoshka; do
    opts=(--preset nli-pairs --head "$head"); [ "$head" = matryoshka ] && opts=(--preset nli-pairs --loss matryoshka)
    train "nli-$head" "${opts[@]}"
    train "nli-$head-std" "${opts[@]}" --head-standardize
    train "nli-$head-distill1" "${opts[@]}" --distill 1
    train "nli-$head-std-distill1" "${opts[@]}" --head-standardize --distill 1
  done
  python3 "$here/selection_table.py" "$runs"/nli-* --out "$here/results/selection-nli-pairs"
fi
if [ "$what" = vision ] || [ "$what" = all ]; then
  pre=${PRETRAINED:-runs/cpu-presets/tiny-imagenet-pretrain}
  train tin-none --preset tiny-imagenet-100 --head none --init-from "$pre"
  train tin-monotonic-raw --preset tiny-imagenet-100 --head monotonic --no-head-standardize --init-from "$pre"
  train tin-monotonic --preset tiny-imagenet-100 --head monotonic --init-from "$pre"
  train tin-mlp --preset tiny-imagenet-100 --head mlp --init-from "$pre"
  train tin-matryoshka --preset tiny-imagenet-100 --loss matryoshka --init-from "$pre"
  train tin-monotonic-distill1 --preset tiny-imagenet-100 --head monotonic --distill 1 --init-from "$pre"
  python3 "$here/selection_table.py" "$runs"/tin-* --out "$here/results/selection-tiny-imagenet-100"
fi
