"""`python -m steerguide.train ARGS` is `steerguide train ARGS` (what `accelerate launch -m` runs)."""

import sys

from steerguide.cli import run

sys.exit(run(["train", *sys.argv[1:]]))
