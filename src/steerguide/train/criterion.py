"""The calibration criterion: is a personalization in the regime of few-shot personalization?

Fixed in advance and blind to guidance: sampled with CFG, the personalized model must keep most of the
prompt and get most, not all, of the subject, against the base model on the same prompts and seeds:

- text ratio = text / text of the base model >= 0.80, and
- normalized fidelity = (F - F_base) / (F_ref - F_base) in [0.35, 0.85], where F_ref is what the subject's
  own other images reach (the toy world: held-out renders; real photos: the photos among themselves).

The toy world measures it with its judges (`toyworld.calibration`, `toyworld.stopping`), real photos with
DINO and CLIP-T (`evaluate.stopping`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Criterion:
    text_ratio_min: float = 0.80
    fidelity_min: float = 0.35
    fidelity_max: float = 0.85


CRITERION = Criterion()


@dataclass(frozen=True)
class Calibration:
    """One personalization against the criterion (means over its subject's prompts x seeds)."""

    text: float
    text_base: float
    fidelity: float
    fidelity_base: float
    fidelity_heldout: float
    text_ratio: float
    normalized_fidelity: float
    passed: bool
    why: str  # "" when passed; otherwise which bound is missed


def assess(text: float, text_base: float, fidelity: float, fidelity_base: float, fidelity_heldout: float,
           criterion: Criterion = CRITERION) -> Calibration:
    """The criterion on five means; a ratio that cannot be formed (base text 0, held-out renders no
    closer to the subject than base samples) is NaN and a miss."""
    ratio = text / text_base if text_base > 0 else math.nan
    span = fidelity_heldout - fidelity_base
    normalized = (fidelity - fidelity_base) / span if span > 0 else math.nan
    why = []
    if not ratio >= criterion.text_ratio_min:
        why.append(f"text ratio {ratio:.2f} < {criterion.text_ratio_min:.2f}")
    if not normalized >= criterion.fidelity_min:
        why.append(f"normalized fidelity {normalized:.2f} < {criterion.fidelity_min:.2f}")
    elif not normalized <= criterion.fidelity_max:
        why.append(f"normalized fidelity {normalized:.2f} > {criterion.fidelity_max:.2f}")
    return Calibration(text, text_base, fidelity, fidelity_base, fidelity_heldout, ratio, normalized,
                       not why, "; ".join(why))




def more_steps_can_help(result: Calibration) -> bool:
    """A miss on fidelity alone, with the prompt kept, is what training longer can mend (it takes more of
    the subject); a lost prompt or too much of the subject it only makes worse."""
    return (not result.passed and result.text_ratio >= CRITERION.text_ratio_min
            and result.normalized_fidelity < CRITERION.fidelity_min)
