"""The toy world: steerguide's embedded default world, runnable with no downloads.

A procedural world of 32x32 scenes with captions from a small grammar, a base text-to-image model
pretrained on it (a stock diffusers `StableDiffusionPipeline` folder), personal subjects the base
model has never seen, and judges that score images as DINO (fidelity) and CLIP-T (text) do.

The judges and subjects are imported on first use (the fidelity judge needs torch), so that the CLI
starts without torch. `render` is imported at once: the function shares its name with its module,
which an import of the module would otherwise leave in its place.
"""

from typing import TYPE_CHECKING

from steerguide.lazy import lazy_attributes
from steerguide.toyworld.render import Look, render, render_array
from steerguide.toyworld.world import RARE_TOKENS, Spec, caption, complete, parse_caption, random_spec

_WHERE = {
    "base_model_path": "steerguide.toyworld.assets",
    "load_base_pipeline": "steerguide.toyworld.assets",
    "FidelityJudge": "steerguide.toyworld.fidelity",
    "roc_auc": "steerguide.toyworld.fidelity",
    "ATTRIBUTES": "steerguide.toyworld.judges",
    "Reading": "steerguide.toyworld.judges",
    "TextJudge": "steerguide.toyworld.judges",
    "read": "steerguide.toyworld.judges",
    "SUBJECTS": "steerguide.toyworld.subjects",
    "PhotoContext": "steerguide.toyworld.subjects",
    "Subject": "steerguide.toyworld.subjects",
    "export_subjects": "steerguide.toyworld.subjects",
    "get_subject": "steerguide.toyworld.subjects",
    "load_subjects": "steerguide.toyworld.subjects",
}

__all__ = [
    "ATTRIBUTES",
    "FidelityJudge",
    "Look",
    "PhotoContext",
    "RARE_TOKENS",
    "Reading",
    "SUBJECTS",
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
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)

if TYPE_CHECKING:
    from steerguide.toyworld.assets import base_model_path, load_base_pipeline
    from steerguide.toyworld.fidelity import FidelityJudge, roc_auc
    from steerguide.toyworld.judges import ATTRIBUTES, Reading, TextJudge, read
    from steerguide.toyworld.subjects import (
        SUBJECTS,
        PhotoContext,
        Subject,
        export_subjects,
        get_subject,
        load_subjects,
    )
