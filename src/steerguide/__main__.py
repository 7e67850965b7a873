"""`python -m steerguide ...` is the `steerguide` command."""

from steerguide.cli import main

main()
