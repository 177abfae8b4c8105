#!/usr/bin/env bash
# GPU training benchmark on Tiny ImageNet (100 classes, 32x32, ../shared/data): a ResNet34 (CIFAR stem) trained
# from scratch with SupCon as the baseline (--head none; no ImageNet weights offline), then MonoCon and the
# std-MLP ablation starting from its encoder (--init-from), as a pre-trained encoder does in the paper.
# Records throughput (examples/s, seconds per epoch: from each run's metrics.jsonl) and final metrics in
# bench/results/gpu_tiny_imagenet-<gpu>-<nproc>x-<date>.json, with the commands that made them.
#
#   bench/gpu_train_tiny_imagenet.sh                      # all GPUs this machine has (torchrun if > 1)
#   NPROC=1 BASE_EPOCHS=5 HEAD_EPOCHS=3 bench/gpu_train_tiny_imagenet.sh   # quick smoke run
#
# Settings (environment): NPROC, BASE_EPOCHS (60), HEAD_EPOCHS (30), GLOBAL_BATCH (256, split over the
# processes: --batch-size is per process), WORKERS (8 data-loader workers per process), COMPILE (0|1),
# GATHER (1: SupCon over all processes' embeddings), DATA_ROOT (../shared/data), OUT (runs/gpu-tin-<date>).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v nvidia-smi >/dev/null || { echo "error: no nvidia-smi: this benchmark needs a CUDA GPU" >&2; exit 1; }
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "error: torch sees no CUDA device" >&2; exit 1; }

NPROC=${NPROC:-$(nvidia-smi -L | wc -l)}
BASE_EPOCHS=${BASE_EPOCHS:-60}
HEAD_EPOCHS=${HEAD_EPOCHS:-30}
GLOBAL_BATCH=${GLOBAL_BATCH:-256}
WORKERS=${WORKERS:-8}
COMPILE=${COMPILE:-0}
GATHER=${GATHER:-1}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${OUT:-runs/gpu-tin-$STAMP}
export MONOCON_DATA_ROOT=${DATA_ROOT:-${MONOCON_DATA_ROOT:-$(cd .. && pwd)/shared/data}}
[ -f "$MONOCON_DATA_ROOT/tiny_imagenet32_jpg/tiny_imagenet32_jpg_train.npz" ] \
  || { echo "error: Tiny ImageNet not found under $MONOCON_DATA_ROOT (set DATA_ROOT)" >&2; exit 1; }
if (( GLOBAL_BATCH % NPROC )); then echo "error: GLOBAL_BATCH $GLOBAL_BATCH is not a multiple of NPROC $NPROC" >&2; exit 1; fi
BATCH=$(( GLOBAL_BATCH / NPROC ))

if (( NPROC > 1 )); then
  LAUNCH=(torchrun --standalone --nproc_per_node "$NPROC" -m monocon_edge.cli)
else
  LAUNCH=(python -m monocon_edge.cli)
fi
COMMON=(train --preset tiny-imagenet-100 --device cuda --batch-size "$BATCH" --num-workers "$WORKERS"
        --no-deterministic)   # cuDNN autotuning: throughput, not bit-reproducibility
(( COMPILE )) && COMMON+=(--compile)
(( GATHER && NPROC > 1 )) && COMMON+=(--gather-negatives)

mkdir -p "$OUT" bench/results
LOG="$OUT/commands.txt"
run() {  # run NAME ARGS...: one training run into $OUT/NAME, its command appended to $LOG
  local name=$1; shift
  local cmd=("${LAUNCH[@]}" "${COMMON[@]}" "$@" --out "$OUT/$name")
  echo "${cmd[*]}" | tee -a "$LOG"
  "${cmd[@]}"
}

run none      --head none --encoder resnet34 --weights none --epochs "$BASE_EPOCHS"
run monotonic --head monotonic --init-from "$OUT/none" --epochs "$HEAD_EPOCHS"
run mlp       --head mlp --init-from "$OUT/none" --epochs "$HEAD_EPOCHS"

GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' /' '__')
RESULT="bench/results/gpu_tiny_imagenet-${GPU}-${NPROC}x-${STAMP}.json"
python - "$OUT" "$RESULT" "$NPROC" <<'PY'
import json, platform, subprocess, sys
from pathlib import Path

import torch

out, result, nproc = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
runs = {}
for name in ("none", "monotonic", "mlp"):
    rows = [json.loads(l) for l in (out / name / "metrics.jsonl").read_text().splitlines() if l.strip()]
    # Rows after the first training row: the first includes cuDNN autotuning / compilation.
    timed = [r for r in rows if r.get("examples_per_s")][1:] or [r for r in rows if r.get("examples_per_s")]
    summary = json.loads((out / name / "summary.json").read_text())
    runs[name] = {
        "examples_per_s_mean": sum(r["examples_per_s"] for r in timed) / len(timed),
        "epoch_s_mean": sum(r["epoch_s"] for r in timed) / len(timed),
        "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"],
        "global_batch_size": summary.get("global_batch_size"), "final": summary["final"],
    }
record = {
    "benchmark": "gpu_train_tiny_imagenet", "nproc": nproc,
    "gpu": subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip().splitlines(),
    "torch": torch.__version__, "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported(),
    "python": platform.python_version(), "commands": (out / "commands.txt").read_text().splitlines(),
    "runs": runs,
}
result.write_text(json.dumps(record, indent=2) + "\n")
print(f"wrote {result}")
for name, r in runs.items():
    print(f"{name:10s} {r['examples_per_s_mean']:9.0f} images/s  {r['epoch_s_mean']:7.2f} s/epoch  "
          f"Recall@1 {r['final'].get('recall@1', float('nan')):.4f}  d_eff {r['final'].get('d_eff')}")
PY
