"""The toy world: steerguide's embedded default world, runnable with no downloads.

A procedural world of 32x32 scenes with captions from a small grammar, a base text-to-image model
pretrained on it (a stock diffusers `StableDiffusionPipeline` folder), personal subjects the base
model has never seen, and judges that score images as DINO (fidelity) and CLIP-T (text) do.
"""

from steerguide.toyworld.assets import base_model_path, load_base_pipeline
from steerguide.toyworld.fidelity import FidelityJudge, roc_auc
from steerguide.toyworld.judges import ATTRIBUTES, Reading, TextJudge, read
from steerguide.toyworld.render import Look, render, render_array
from steerguide.toyworld.subjects import (
    SUBJECTS,
    PhotoContext,
    Subject,
    export_subjects,
    get_subject,
    load_subjects,
)
from steerguide.toyworld.world import RARE_TOKENS, Spec, caption, complete, parse_caption, random_spec

__all__ = [
    "ATTRIBUTES",
    "RARE_TOKENS",
    "SUBJECTS",
    "FidelityJudge",
    "Look",
    "PhotoContext",
    "Reading",
    "Spec",
    "Subject",
    "TextJudge",
    "base_model_path",
    "caption",
    "complete",
    "export_subjects",
    "get_subject",
    "load_base_pipeline",
    "load_subjects",
    "parse_caption",
    "random_spec",
    "read",
    "render",
    "render_array",
    "roc_auc",
]
