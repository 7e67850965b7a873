#!/usr/bin/env bash
# The toy DreamBench end to end: the base-model reference, the sweep (all toy subjects × 16 prompts × 2 seeds),
# the report, and the verdicts on the paper's claims. Resumable: rerun the same command to continue.
#   benchmarks/toy_dreambench/run.sh [OUT]        (default OUT: runs/toy_dreambench)
#   DEADLINE=HH:MM (UTC): start no subject of the sweep after that time (whole subjects only)
set -euo pipefail
here=$(dirname "$0")
out=${1:-runs/toy_dreambench}
python "$here/run.py" "$here/config-base.yaml" --out "$out/base-reference" --workers 2
python "$here/run.py" "$here/config.yaml" --out "$out" --workers 2 ${DEADLINE:+--deadline "$DEADLINE"}
steerguide report "$out"
python "$here/verdict.py" "$out" --reference "$out/base-reference" --json "$out/verdict.json"
