#!/usr/bin/env bash
# The GPU run (issue 28): the cost table in fp16 at the SD 1.5 and SDXL UNet configurations, and the toy
# DreamBench on CUDA with as many drawn subjects as fit, in at most 8 minutes on one H100; tables to OUT.
#   benchmarks/gpu/run.sh [OUT] [--minutes 8]     # OUT defaults to $OUT (the device tool's folder)
#   benchmarks/gpu/run.sh OUT --smoke             # CPU, tiny sizes: that it all runs (a test runs it)
# Installs nothing from outside the working tree: diffusers is not on the device image, so its wheels
# travel in .whl/ (benchmarks/gpu/wheels.sh fetches them on a machine with registry access; the device
# call carries .whl) and are unpacked into a temporary folder. What run.py does: its docstring.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
if ! "$python" -c "import diffusers" 2>/dev/null; then
  if ! compgen -G "$root/.whl/*.whl" > /dev/null; then
    echo "error: diffusers is not installed and $root/.whl holds no wheels (run benchmarks/gpu/wheels.sh)" >&2
    exit 2
  fi
  site=$(mktemp -d)
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$root"/.whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export DIFFUSERS_VERBOSITY=error TRANSFORMERS_VERBOSITY=error
exec "$python" "$here/run.py" "$@"
