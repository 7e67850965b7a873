#!/usr/bin/env bash
# What narrowing the verdicts' intervals takes: the default strength's full grid (config.yaml) and the base
# reference on ten more subjects, drawn by a rule fixed before any run (subjects-extra.yaml, made by
# draw_subjects.py --n 10 --seed 2026), then the verdicts on the 20 subjects pooled. Run it after run.sh,
# with the same OUT; resumable like run.sh.
#   benchmarks/toy_dreambench/more_subjects.sh [OUT]     (default OUT: runs/toy_dreambench)
set -euo pipefail
here=$(dirname "$0")
out=${1:-runs/toy_dreambench}
extra="$here/subjects-extra.yaml"
run() { python "$here/run.py" "$@" --workers 2 --subjects-file "$extra" ${DEADLINE:+--deadline "$DEADLINE"}; }
run "$here/config-base.yaml" --out "$out/base-reference-extra"
run "$here/config.yaml" --out "$out/default-extra"
python "$here/verdict.py" default-20="$out/default+$out/default-extra" \
  --reference "$out/base-reference+$out/base-reference-extra" --breakdown '' --json "$out/verdict-20.json"
