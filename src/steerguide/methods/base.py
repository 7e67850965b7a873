"""What a guidance method is, as the engine, the guiders, sweeps, the report, the UI and the tuner read it.

Every method steerguide runs has the shape D = D_first + w · (D_ft(x, c) − D_first) (docs/method.md); a
method says only what its first term is: the weak model θ_ω = θ_pre + ω·Δ (ω fixed, or the user's) on the
null prompt or on the prompt. A method is one `Method` in a file of this package, registered by name;
the name is what users write (`--method pg`, run.json, sweep YAML).
"""

from __future__ import annotations

from dataclasses import dataclass

from steerguide.errors import UserError

NULL, PROMPT = "null", "prompt"  # the condition the weak half sees: ∅ (or the negative prompt), or c
UNKNOWN_ORDER = 9  # where a name no registered method has (an old results file) sorts in tables


@dataclass(frozen=True)
class Method:
    """One guidance method.

    Attributes:
        name: the user-facing name (CLI, run.json, sweep YAML, result rows).
        title: how pages and tables show it ("PG").
        default_omega: ω when none is given; for a method that takes no ω, its ω always (CFG: 1, the
            personalized model itself).
        takes_omega: whether ω (and its schedule) is the user's to choose.
        weak_sees: the condition of the weak half: `NULL` (the null or negative prompt) or `PROMPT`.
        axes: the sweep config's axes of the method (`guidance.NAME: {scale: [...], ...}`).
        order: where it sorts in the report, the UI and the demo (low first).
    """

    name: str
    title: str
    default_omega: float
    takes_omega: bool
    weak_sees: str
    axes: frozenset[str]
    order: int

    def __post_init__(self) -> None:
        if self.weak_sees not in (NULL, PROMPT):
            raise ValueError(f"method {self.name}: weak_sees must be {NULL!r} or {PROMPT!r}")

    @property
    def weak_on_prompt(self) -> bool:
        """Whether the weak half is given the prompt's condition (AG) rather than the null one (CFG, PG)."""
        return self.weak_sees == PROMPT

    @property
    def uses_weak_model(self) -> bool:
        """False where the first term is the personalized model on ∅, CFG's: the pipeline runs as it stands
        (no personalization needed, nothing prepared)."""
        return self.takes_omega or self.default_omega != 1.0 or self.weak_on_prompt

    def label(self, scale: float, omega: float | None = None, omega_schedule: str | None = None,
              interval: tuple[float, float] | None = None, title: bool = False) -> str:
        """How sweeps, the report and the UI name a setting: "pg w=4 ω=0.3 linear:1 [0,0.5]"."""
        parts = [self.title if title else self.name, f"w={scale:g}"]
        if omega is not None and self.takes_omega:
            parts.append(f"ω={omega:g}")
        if omega_schedule not in (None, "constant") and self.takes_omega:
            parts.append(str(omega_schedule))
        interval = tuple(interval or (0.0, 1.0))
        if interval != (0.0, 1.0):
            parts.append(f"[{interval[0]:g},{interval[1]:g}]")
        return " ".join(parts)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make `method` known by its name to every part of steerguide; returns it."""
    if method.name in _REGISTRY and _REGISTRY[method.name] != method:
        raise ValueError(f"a different method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Forget the method `name` (for plugins and tests that registered one)."""
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered methods' names, in display order."""
    return tuple(m.name for m in registered())


def registered() -> list[Method]:
    """The registered methods, in display order."""
    return sorted(_REGISTRY.values(), key=lambda m: (m.order, m.name))


def get(name: str) -> Method:
    """The method named `name`; a one-line `UserError` naming the known ones otherwise."""
    method = _REGISTRY.get(name) if isinstance(name, str) else None
    if method is None:
        raise UserError(f"unknown method {name!r}; expected one of {', '.join(names())}")
    return method


def find(name: str) -> Method | None:
    """The method named `name`, or None (a results row of a method no longer registered)."""
    return _REGISTRY.get(name) if isinstance(name, str) else None


def described(name: str) -> Method:
    """The method named `name`, or for a results row of a method not registered here a stand-in titled by
    its name, showing every value its row holds and sorting last."""
    return find(name) or Method(name, name, 1.0, True, NULL, frozenset(), UNKNOWN_ORDER)


def order_of(name: str) -> int:
    """Where rows of the method `name` sort in tables and plots."""
    method = find(name)
    return UNKNOWN_ORDER if method is None else method.order
