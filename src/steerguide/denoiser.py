"""`guided(pipe, personalization, config)`: guidance installed where the pipeline calls its denoiser.

CFG, AG and PG differ only in which weights and which condition the first term of
`uncond + w · (cond − uncond)` sees (the method says: `steerguide.methods`), so guidance wraps the
pipeline's denoiser calls and the stock pipeline evaluates the formula. The pipeline's family picks the
engine: one batched call over [null half; prompt half] (`steerguide.one_batch`), or a negative branch
run as its own call (Flux true CFG, Chroma, Qwen-Image, Wan: `steerguide.separate`). Both share the
block's wrapper, counters and step index (`steerguide.block`) and the choice of θ_ω's realization
(`steerguide.weak.choose`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from steerguide.block import BlockWrapper
from steerguide.families import family_of
from steerguide.guidance import GuidanceConfig
from steerguide.one_batch import guided_in_one_batch
from steerguide.personalization import Personalization
from steerguide.separate import guided_separately


@contextmanager
def guided(pipe, personalization: Personalization, config: GuidanceConfig) -> Iterator[BlockWrapper]:
    """Install `config`'s guidance on `pipe` for the block; yields the wrapper (its `.counters`, `.steps`).

    Call the pipeline inside the block with its CFG scale set to `config.scale`:
    `family_of(pipe).scale_kwargs(config.scale)` (`true_cfg_scale` and a negative prompt for Flux and
    Qwen-Image, `guidance_scale` elsewhere; see `steerguide.families`). Blocks may nest (the inner one
    guides), overlap and exit in any order, and run in several threads on pipelines sharing components.
    The family picks the engine: one batched call (`steerguide.one_batch`) or a negative branch of its own
    (Flux true CFG, ...: `steerguide.separate`).
    """
    engine = guided_separately if family_of(pipe).separate else guided_in_one_batch
    with engine(pipe, personalization, config) as wrapper:
        yield wrapper
