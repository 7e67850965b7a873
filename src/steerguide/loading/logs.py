"""The warnings libraries log while loading, collected instead of printed (a LoRA that does not fit is
only logged by diffusers; the loader turns it into one line)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def captured_warnings(logger_names: tuple[str, ...]) -> Iterator[list[str]]:
    """Collect the warnings of these loggers (instead of printing them), whatever their verbosity was."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    collector = Collect(level=logging.WARNING)
    saved = []
    for name in logger_names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.handlers[:], logger.propagate))
        logger.handlers = [collector]
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    try:
        yield messages
    finally:
        for logger, level, handlers, propagate in saved:
            logger.handlers = handlers
            logger.setLevel(level)
            logger.propagate = propagate
