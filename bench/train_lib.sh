# Shared by the bench scripts that train runs: `log MESSAGE` (timestamped, also into $runs/timings.txt) and
# `train NAME OPTIONS...` (skips a finished run, resumes one with a last.pt, else trains it into $runs/NAME).
# Needs $runs set by the caller.
log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$runs/timings.txt"; }
train() {
  local name=$1; shift
  if [ -f "$runs/$name/summary.json" ]; then log "skip $name (done)"; return; fi
  local t0=$SECONDS
  if [ -f "$runs/$name/last.pt" ]; then monocon-edge train --resume "$runs/$name"
  else rm -rf "${runs:?}/$name"; monocon-edge train "$@" --out "$runs/$name"; fi
  log "$name $((SECONDS - t0)) s"
}
