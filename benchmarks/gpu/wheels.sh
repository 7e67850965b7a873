#!/usr/bin/env bash
# The wheels run.sh needs on the device image (Python 3.12, torch, transformers, accelerate and peft
# there; diffusers and importlib_metadata not): pure-Python wheels, fetched here from PyPI into .whl/
# (git-ignored through .git/info/exclude), the versions this repository is tested with.
#   benchmarks/gpu/wheels.sh       then, with the device tool: run(command="benchmarks/gpu/run.sh", carry=[".whl"])
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
  -d "$root/.whl" diffusers==0.42.1 importlib_metadata==10.2.0 peft==0.22.0
