"""Classifier-free guidance: D_first = D_ft(x, ∅), the personalized model on the null prompt (Ho & Salimans
2022). The pipeline runs as it stands."""

from steerguide.methods.base import NULL, Method, register

CFG = register(Method(
    name="cfg", title="CFG", default_omega=1.0, takes_omega=False, weak_sees=NULL,
    axes=frozenset({"scale", "interval"}), order=0,
))
