"""steerguide: personalization guidance for personalized text-to-image diffusion models.

pipe = load_pipeline(base); personal = load_personalization(pipe, path)
result = sample(pipe, personal, GuidanceConfig("pg", scale=7.5, omega=0.5), prompts)

The names below are imported on first use (`steerguide.lazy`): `import steerguide`, and the CLI's
start, do not import torch or diffusers.
"""

from typing import TYPE_CHECKING

from steerguide._version import __version__ as __version__
from steerguide.lazy import lazy_attributes

_WHERE = {
    "Counters": "steerguide.block",
    "guided": "steerguide.denoiser",
    "GuidanceConfig": "steerguide.guidance",
    "guide": "steerguide.guidance",
    "load_personalization": "steerguide.loading",
    "load_pipeline": "steerguide.loading",
    "Personalization": "steerguide.personalization",
    "SampleResult": "steerguide.sampling",
    "generate": "steerguide.generation",
    "sample": "steerguide.sampling",
}

__all__ = [
    "Counters",
    "GuidanceConfig",
    "Personalization",
    "SampleResult",
    "generate",
    "guide",
    "guided",
    "load_personalization",
    "load_pipeline",
    "sample",
]
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)

if TYPE_CHECKING:  # what type checkers and editors see
    from steerguide.block import Counters
    from steerguide.denoiser import guided
    from steerguide.generation import generate
    from steerguide.guidance import GuidanceConfig, guide
    from steerguide.loading import load_personalization, load_pipeline
    from steerguide.personalization import Personalization
    from steerguide.sampling import SampleResult, sample
