"""The guidance methods, one file each (`cfg`, `ag`, `pg`), registered by name in `base`'s registry.

Adding a method is a file here with its `Method` (and an import below), or a `register(Method(...))`
from outside the package: the engine, the guiders, sweeps, the report and the UI read its attributes.
"""

from steerguide.methods import ag, cfg, pg  # noqa: F401  (each registers its method)
from steerguide.methods.base import (
    NULL,
    PROMPT,
    Method,
    described,
    find,
    get,
    names,
    order_of,
    register,
    registered,
    unregister,
)

__all__ = ["NULL", "PROMPT", "Method", "described", "find", "get", "names", "order_of", "register", "registered", "unregister"]
