"""steerguide: personalization guidance for personalized text-to-image diffusion models.

pipe = load_pipeline(base); personal = load_personalization(pipe, path)
result = sample(pipe, personal, GuidanceConfig("pg", scale=7.5, omega=0.5), prompts)
"""

__version__ = "0.1.0"

from steerguide.denoiser import Counters, guided
from steerguide.guidance import GuidanceConfig, guide
from steerguide.loading import load_personalization, load_pipeline
from steerguide.personalization import Personalization
from steerguide.sampling import SampleResult, generate, sample

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
