"""Which pipeline call a denoiser call belongs to: the nearest pipeline method on the caller's stack.

Pipelines sharing a denoiser (a txt2img twin, img2img built from the same components) call the same
module; what tells their calls apart is the pipeline whose `__call__` is running. The stack of the
calling thread says it exactly, nested calls included (a callback of one pipeline calling another).
"""

from __future__ import annotations

import sys
from typing import Any


def calling_pipeline() -> Any:
    """The `DiffusionPipeline` whose method is the nearest caller on this thread's stack (None: none is)."""
    from diffusers import DiffusionPipeline

    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self":
            owner = frame.f_locals.get("self")
            if isinstance(owner, DiffusionPipeline):
                return owner
        frame = frame.f_back
    return None



def calling_components(predicate) -> Any:
    """The nearest `components` argument on this thread's stack for which `predicate` holds (diffusers'
    modular blocks are called as `block(components, state, ...)`, `components` the modular pipeline)."""
    frame = sys._getframe(1)
    while frame is not None:
        if "components" in frame.f_code.co_varnames[: frame.f_code.co_argcount]:
            components = frame.f_locals.get("components")
            if components is not None and predicate(components):
                return components
        frame = frame.f_back
    return None
