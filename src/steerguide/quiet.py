"""The libraries' own progress bars and log chatter silenced: steerguide's bars and one-line errors are the
interface (diffusers' "Loading pipeline components" bars do not belong inside a sweep's bar)."""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from contextlib import contextmanager

LIBRARY_LOGGING = ("diffusers.utils.logging", "transformers.utils.logging")


def quiet_libraries() -> None:
    """Silence the libraries' bars and chatter for the rest of the process (the CLI's start).

    Through the settings the libraries read as they load (tqdm's TQDM_DISABLE covers diffusers' and
    transformers' loading bars), so that the CLI's start does not import them: seconds that `--help`,
    bad input and the web UI's first page should not wait for. A library already loaded is told directly."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in LIBRARY_LOGGING:
        if name in sys.modules:
            sys.modules[name].set_verbosity_error()
            sys.modules[name].disable_progress_bar()


@contextmanager
def libraries_quieted():
    """Silence the libraries' bars and chatter inside the block, then put their settings back (the demo
    run as a library function must leave the caller's logging as it found it)."""
    libraries = [importlib.import_module(name) for name in LIBRARY_LOGGING]
    verbosity = [lib.get_verbosity() for lib in libraries]
    bars = [lib.is_progress_bar_enabled() for lib in libraries]
    for lib in libraries:
        lib.disable_progress_bar()
        lib.set_verbosity_error()
    try:
        yield
    finally:
        for lib, bar, level in zip(libraries, bars, verbosity, strict=True):
            lib.set_verbosity(level)
            if bar:
                lib.enable_progress_bar()
