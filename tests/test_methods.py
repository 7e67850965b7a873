"""Adding a guidance method is one file: a `Method` registered from outside steerguide (here, this test)
runs through `guided` like its diffusers+peft reference, is parsed from a sweep config and named and
ordered by the report and the UI, with no edit of the package.

The method: guidance by the pretrained model on the null prompt, D = D_pre(x, ∅) + w·(D_ft(x, c) − D_pre(x, ∅))
(PG's first term at a fixed ω = 0, with no ω for the user to choose). Its reference is the two-pipeline
loop of tests/reference_impl.py with the weak pipeline's adapter at scale 0 on the null prompt.
"""

from __future__ import annotations

import pytest
import torch
from reference_impl import load, reference_latents

from steerguide import methods
from steerguide.errors import UserError
from steerguide.evaluate.report import summarize
from steerguide.guidance import GuidanceConfig
from steerguide.loading import load_personalization, load_pipeline
from steerguide.methods import NULL, Method
from steerguide.sampling import sample
from steerguide.sweep.config import parse_config
from steerguide.testing import save_random_lora
from steerguide.ui.studio import _setting_name

# the whole of the new method: one value, registered by name
PRETRAINED_NULL = Method(
    name="pre-null",
    title="PRE",
    default_omega=0.0,  # θ_ω at ω = 0: the pretrained weights
    takes_omega=False,
    weak_sees=NULL,
    axes=frozenset({"scale", "interval"}),
    order=-1,  # listed before CFG
)

PROMPTS = ["a dog on the beach", "a red cat"]
SIDE, STEPS, SCALE = 16, 4, 4.0
ATOL = 2e-4


@pytest.fixture(scope="module", autouse=True)
def registered_method():
    methods.register(PRETRAINED_NULL)
    yield PRETRAINED_NULL
    methods.unregister(PRETRAINED_NULL.name)


@pytest.fixture(scope="module")
def sd15_lora(tiny_model_dir, tmp_path_factory):
    base = tiny_model_dir("sd15")
    lora = save_random_lora(
        load_pipeline(base), tmp_path_factory.mktemp("methods-lora"), seed=11,
        target_modules=("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"),
    )  # fmt: skip
    return base, lora


def _engine(base, lora, config):
    pipe = load_pipeline(base)
    result = sample(
        pipe, load_personalization(pipe, lora), config, PROMPTS, num_images=2, seed=5, steps=STEPS,
        height=SIDE, width=SIDE, progress=False, output_type="latent",
    )  # fmt: skip
    return torch.stack([torch.stack(row) for row in result.images]), result


def test_a_registered_method_runs_through_guided_as_its_reference(sd15_lora):
    base, lora = sd15_lora
    ours, result = _engine(base, lora, GuidanceConfig("pre-null", scale=SCALE))
    ft, weak = load(base), load(base)
    for pipe in (ft, weak):
        pipe.load_lora_weights(str(lora), adapter_name="p")
    ref = reference_latents(
        ft, weak, method="pg", scale=SCALE, omega=0.0, prompts=PROMPTS, seed=5, steps=STEPS, side=SIDE
    )
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)
    assert result.counters.denoiser_calls == STEPS  # one batched pass per step, as CFG
    assert result.omegas == [0.0] * STEPS  # its fixed ω at every step
    assert GuidanceConfig("pre-null", scale=SCALE).describe()["omega"] is None  # run.json: no ω of the user's
    cfg, _ = _engine(base, lora, GuidanceConfig("cfg", scale=SCALE))
    assert (cfg - ref).abs().max() > 50 * ATOL  # the weak model matters at this size: the test can fail


def test_a_registered_method_in_a_sweep_config_the_report_and_the_ui():
    config = parse_config({
        "base": "unused", "benchmark": "toy", "metrics": ["toy_fidelity"],
        "guidance": {"pg": {"scale": 3, "omega": 0.5}, "pre-null": {"scale": [2, 4], "interval": [0.0, 0.5]}},
    })  # fmt: skip
    labels = [s.label for s in config.settings]
    assert labels == ["pg w=3 ω=0.5", "pre-null w=2 [0,0.5]", "pre-null w=4 [0,0.5]"]
    with pytest.raises(UserError, match=r"guidance.pre-null.omega: unknown key \(expected one of interval, scale\)"):
        parse_config({"base": "unused", "benchmark": "toy", "metrics": ["toy_fidelity"],
                      "guidance": {"pre-null": {"scale": 2, "omega": 0.3}}})

    rows = [
        {**s.guidance_config().describe(), "label": s.label, "metrics": {"toy_fidelity": 0.5 + i / 10}}
        for i, s in enumerate(config.settings)
    ]
    rows.append({**GuidanceConfig("cfg", scale=3).describe(), "label": "cfg w=3", "metrics": {"toy_fidelity": 0.1}})
    summary = summarize(rows)
    assert [s.label for s in summary] == ["pre-null w=2 [0,0.5]", "pre-null w=4 [0,0.5]", "cfg w=3", "pg w=3 ω=0.5"]
    assert _setting_name(rows[1]) == "PRE w=2 [0,0.5]"


def test_the_registry_names_what_it_knows():
    with pytest.raises(UserError, match=r"unknown method 'nope'; expected one of pre-null, cfg, ag, pg$"):
        GuidanceConfig("nope")
    with pytest.raises(ValueError, match="already registered"):
        methods.register(Method("pg", "PG", 0.3, True, NULL, frozenset({"scale"}), 2))
    assert methods.get("pg").default_omega == 0.5  # the registered one was kept
