"""Personalization guidance (Park et al., ICCV 2025): D_first = D_ω(x, ∅), θ_ω = θ_pre + ω·Δ on the null
prompt. By default the weak model keeps half of the personalization; ω may follow a schedule."""

from steerguide.methods.base import NULL, Method, register

PG = register(Method(
    name="pg", title="PG", default_omega=0.5, takes_omega=True, weak_sees=NULL,
    axes=frozenset({"scale", "omega", "omega_schedule", "interval"}), order=2,
))
