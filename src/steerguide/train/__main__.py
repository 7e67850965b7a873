"""`python -m steerguide.train ...` = `steerguide train ...`; what `accelerate launch -m steerguide.train` runs."""

import sys

from steerguide.cli import run

sys.exit(run(["train", *sys.argv[1:]]))
