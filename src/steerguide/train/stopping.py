"""Train until a rule measured on validation renders holds, instead of guessing the step count.

`train_until(config, rule, every, max_steps)` trains `config.steps` steps, asks the rule about the result,
and while the rule says more training can still make it hold, resumes for `every` more steps (from the
checkpoint of the step reached: the same run as one uninterrupted training of that many steps), up to
`max_steps`. It stops when the rule holds, when the rule says more steps cannot help (the prompt is
already lost), or at `max_steps`; `OUT/stopping.json` records every check and which ended it.

A rule is named on the command line (`steerguide train --stop-when NAME`); rules are registered by name
(`register_rule`): the toy world's `calibrated`, and `dreambench` for real photos (`evaluate.stopping`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from steerguide.errors import UserError
from steerguide.train.config import TrainConfig

STOPPING_FILE = "stopping.json"


@dataclass(frozen=True)
class Check:
    """One look at a trained folder: whether the rule holds, whether more steps could make it hold (False:
    stop, it never will by training longer), and the figures behind it for the record and the log."""

    passed: bool
    more_helps: bool
    summary: str
    row: dict[str, Any] = field(default_factory=dict)


def criterion_check(result) -> Check:
    """The `Check` of a rule on the calibration criterion (`train.criterion.assess`'s result)."""
    from steerguide.train.criterion import more_steps_can_help

    summary = (f"validation text ratio {result.text_ratio:.2f}, normalized fidelity "
               f"{result.normalized_fidelity:.2f}: " + ("holds" if result.passed else f"misses ({result.why})"))
    row = {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(result).items() if k != "passed"}
    return Check(result.passed, more_steps_can_help(result), summary, row)


class StoppingRule(Protocol):
    name: str

    def check(self, folder: Path) -> Check: ...


_RULES: dict[str, Callable[..., StoppingRule]] = {}


def register_rule(name: str, factory: Callable[..., StoppingRule]) -> None:
    """Make `--stop-when NAME` build its rule with `factory(config, dino=..., clip=...)` (the judges the
    user named, or None; the factory may refuse the config)."""
    _RULES[name] = factory


def rule_for(name: str, config: TrainConfig, dino: str | None = None, clip: str | None = None) -> StoppingRule:
    from steerguide.plugins import discover

    discover()
    if name not in _RULES:
        known = ", ".join(sorted(_RULES)) or "none"
        raise UserError(f"--stop-when {name!r}: unknown stopping rule (known: {known})")
    return _RULES[name](config, dino=dino, clip=clip)


def check_schedule(config: TrainConfig, every: int, max_steps: int) -> None:
    """Refuse, before any work, what would make the resumed runs differ from one longer run."""
    if every < 1:
        raise UserError(f"--check-every must be >= 1, got {every}")
    if max_steps < config.steps:
        raise UserError(f"--max-steps {max_steps} is below --steps {config.steps}: the first check is at --steps")
    if config.lr_scheduler != "constant" or config.lr_warmup_steps:
        # a schedule is laid over the planned step count, which the rule does not know in advance
        raise UserError("--stop-when needs --lr-scheduler constant and no warmup (the step count is not known "
                        "in advance)")
    if not config.checkpoint_every or config.steps % config.checkpoint_every or every % config.checkpoint_every:
        raise UserError(
            f"--stop-when resumes from the checkpoint of each checked step: --checkpoint-every "
            f"({config.checkpoint_every}) must divide --steps ({config.steps}) and --check-every ({every})"
        )


def _read_checks(out: Path) -> dict[int, dict]:
    path = out / STOPPING_FILE
    if not path.is_file():
        return {}
    try:
        return {int(c["step"]): c for c in json.loads(path.read_text())["checks"]}
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a stopping record of steerguide; remove it or use --overwrite") from None


def _write(out: Path, rule: str, checks: dict[int, dict], ended: str) -> None:
    path = out / STOPPING_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"rule": rule, "ended": ended, "checks": [checks[s] for s in sorted(checks)]},
                              indent=2))
    tmp.replace(path)


def train_until(config: TrainConfig, rule: StoppingRule, every: int, max_steps: int,
                train: Callable[[TrainConfig], Path], log: Callable[[str], None] = print) -> tuple[Path, str]:
    """Train `config` under `rule` (module docstring); returns the folder and how it ended: "held",
    "cannot hold" or "max steps"."""
    from steerguide.train.results import read_record

    check_schedule(config, every, max_steps)
    out = Path(config.out)
    # checks of an interrupted earlier run are kept (a check of the same step gives the same answer)
    checks = {} if config.overwrite or not config.resume else _read_checks(out)
    current = config
    while True:
        folder = train(current)
        reached = int(read_record(folder)["steps"])
        found = rule.check(folder)
        checks[reached] = {"step": reached, "passed": found.passed, "more_helps": found.more_helps,
                           "summary": found.summary, **found.row}
        checks = {s: c for s, c in checks.items() if s <= reached}
        if found.passed:
            ended = "held"
        elif not found.more_helps:
            ended = "cannot hold"
        elif reached + every > max_steps:
            ended = "max steps"
        else:
            ended = ""
        _write(out, rule.name, checks, ended or "running")
        log(f"step {reached}: {found.summary}" + (f" -> {ended}" if ended else f" -> {every} more steps"))
        if ended:
            return folder, ended
        current = replace(config, steps=reached + every, resume=True, overwrite=False)
