"""Autoguidance (Karras et al. 2024): D_first = D_ω(x, c), a weaker model on the prompt itself. The weaker
model is the pretrained one (ω = 0) unless an ω is given."""

from steerguide.methods.base import PROMPT, Method, register

AG = register(Method(
    name="ag", title="AG", default_omega=0.0, takes_omega=True, weak_sees=PROMPT,
    axes=frozenset({"scale", "omega", "interval"}), order=1,
))
