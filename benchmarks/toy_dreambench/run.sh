#!/usr/bin/env bash
# The toy DreamBench end to end, at three personalization strengths: the base-model reference, then the
# sweep at the calibrated default strength (full grid), at half and at three times its training steps
# (reduced grid), a report of each, and the verdicts on the paper's claims per strength.
# Resumable: rerun the same command to continue (rows and personalizations are cached per strength).
#   benchmarks/toy_dreambench/run.sh [OUT]        (default OUT: runs/toy_dreambench)
#   DEADLINE=HH:MM (UTC): start no subject of a sweep after that time (whole subjects only)
# Sized to fit 90 minutes on an idle 2-core machine with two workers: see docs/results.md and
#   python benchmarks/toy_dreambench/cost.py --out runs/cost   (measures the per-image cost, estimates the run)
set -euo pipefail
here=$(dirname "$0")
out=${1:-runs/toy_dreambench}
run() { python "$here/run.py" "$@" --workers 2 ${DEADLINE:+--deadline "$DEADLINE"}; }
run "$here/config-base.yaml" --out "$out/base-reference"
# Shortest strength first: each longer one continues the longest shorter LoRA of the same recipe from its
# last checkpoint (200 -> 400 -> 1,200 steps) instead of starting at step 0; under the recipe's constant
# learning rate that gives the same LoRAs bit for bit, and saves 600 of the 1,800 training steps a subject.
# (The default strength copies the LoRA the toy world ships for bnq_triangle, which keeps no checkpoint:
# its three-times training continues the half strength's.)
run "$here/config-half.yaml" --out "$out/half"
run "$here/config.yaml" --out "$out/default" --continue-from "$out/half"
run "$here/config-triple.yaml" --out "$out/triple" --continue-from "$out/default" --continue-from "$out/half"
# The three reports and the verdicts read finished rows only: run them side by side (each report logs to
# its folder, shown once all are done).
pids=()
for strength in default half triple; do
  steerguide report "$out/$strength" > "$out/$strength/report.log" 2>&1 &
  pids+=($!)
done
python "$here/verdict.py" default="$out/default" half="$out/half" triple="$out/triple" \
  --reference "$out/base-reference" --json "$out/verdict.json"
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for strength in default half triple; do cat "$out/$strength/report.log"; done
exit $status
