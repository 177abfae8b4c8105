#!/usr/bin/env bash
# Fourth text grid (issue 11), on the SELECTION split only: hard negatives (`--hard-negatives`: each SNLI/SICK
# pair's contradiction hypothesis of the same premise joins its batch as a negative with a class of its own, the
# sentence-transformers / SimCSE NLI recipe) for every trained head, against the preset without them, each over
# three training seeds on one split (--split-seed 42), so that a difference can be told from the seed-to-seed
# spread. bench/selection_table.py writes bench/results/selection-nli-pairs-hardneg.{md,json}. The report split
# is never read. ~1 min a run on the 2-core machine with the MiniLM features cached.
# Usage: bash bench/select_text_hard_negatives.sh [RUNS_DIR]   (default: runs/select-4)
set -euo pipefail
runs=${1:-runs/select-4}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$runs"
source "$here/train_lib.sh"
for seed in 42 1 2; do
  for head in monotonic mlp matryoshka; do
    if [ "$head" = matryoshka ]; then model=(--loss matryoshka); else model=(--head "$head"); fi
    train "nli-$head-seed$seed" --preset nli-pairs "${model[@]}" --seed "$seed" --split-seed 42
    train "nli-$head-hardneg-seed$seed" --preset nli-pairs "${model[@]}" --hard-negatives --seed "$seed" \
      --split-seed 42
  done
done
python3 "$here/selection_table.py" "$runs"/nli-* --out "$here/results/selection-nli-pairs-hardneg"
