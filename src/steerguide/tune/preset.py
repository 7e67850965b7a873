"""`preset.yaml`: the guidance setting a tuning chose, with its measured scores, as `generate --preset`
and the UI read it back.

    kind: steerguide-preset
    version: 1
    guidance: {method: pg, scale: 4.24, omega: 0.25, omega_schedule: constant}
    base: ...            # what it was tuned for: generate uses them when not given
    personalization: ...
    scores: {toy_fidelity: {mean: 0.71, ci95: [0.68, 0.74]}, toy_text: {...}, objective: {...}}
    target, probes, images, tuned_on: {prompts, seeds, steps}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerguide.errors import UserError

KIND, VERSION = "steerguide-preset", 1
GUIDANCE_KEYS = {"method", "scale", "omega", "omega_schedule"}
# What `steerguide tune` writes besides the guidance (reported, not used): any other key is a typo.
REPORTED_KEYS = {"subject", "target", "scores", "probes", "images", "tuned_on"}
TOP_KEYS = {"kind", "version", "guidance", "base", "personalization", *REPORTED_KEYS}


@dataclass
class Preset:
    """A preset file's record: the guidance `Setting` a tuning chose (its fields inline, as the file
    spells them under `guidance:`), what it was tuned for (base, personalization) and what it reported.
    Not a second setting type: `setting` is the value, `guidance_config` its run."""

    method: str
    scale: float
    omega: float | None = None
    omega_schedule: str = "constant"
    base: str | None = None
    personalization: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # scores, target, probes: reported, not used

    @property
    def setting(self):
        from steerguide.guidance import Setting

        return Setting(self.method, self.scale, self.omega, self.omega_schedule)

    def guidance_config(self, **overrides: Any):
        return self.setting.guidance_config(**overrides)

    def to_dict(self) -> dict[str, Any]:
        guidance: dict[str, Any] = {"method": self.method, "scale": self.scale}
        if self.omega is not None:
            guidance["omega"] = self.omega
            guidance["omega_schedule"] = self.omega_schedule
        data: dict[str, Any] = {"kind": KIND, "version": VERSION, "guidance": guidance}
        if self.base is not None:
            data["base"] = self.base
        if self.personalization is not None:
            data["personalization"] = self.personalization
        data.update(self.extra)
        return data


def settings_from_preset(
    path: str | Path, *, base: str | None = None, personalization: str | None = None, **overrides: Any
):
    """What `generate --preset` and the UI take from a preset: (GuidanceConfig, base, personalization).

    The preset's guidance with the overrides that are not None on top (options given win), and its base
    and personalization where none is given. One function, so that the page and the CLI cannot differ."""
    preset = read_preset(path)
    return (
        preset.guidance_config(**overrides),
        base if base is not None else preset.base,
        personalization if personalization is not None else preset.personalization,
    )


def write_preset(path: str | Path, preset: Preset) -> Path:
    """Write the preset whole or not at all (a temporary file, then a rename)."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    header = "# steerguide preset, written by `steerguide tune`; use: steerguide generate --preset THIS_FILE\n"
    tmp.write_text(header + yaml.safe_dump(preset.to_dict(), sort_keys=False, allow_unicode=True))
    os.replace(tmp, path)
    return path


def read_preset(path: str | Path) -> Preset:
    """A preset file, checked: one line naming the file and the key when it is not one."""
    import yaml

    from steerguide.yaml_files import safe_load

    path = Path(path)
    if path.is_dir() and (path / "preset.yaml").is_file():  # a tuning folder: its preset
        path = path / "preset.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--preset {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    try:
        data = safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"--preset {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UserError(f"--preset {path} is not a steerguide preset (no 'kind: {KIND}')")
    if data.get("version") != VERSION:
        raise UserError(f"--preset {path}: version {data.get('version')!r} is not supported (expected {VERSION})")
    unknown = sorted(str(k) for k in set(data) - TOP_KEYS)
    if unknown:
        raise UserError(f"--preset {path}: key {unknown[0]}: unknown (expected {', '.join(sorted(TOP_KEYS))})")
    guidance = data.get("guidance")
    if not isinstance(guidance, dict):
        raise UserError(f"--preset {path}: key guidance: expected a mapping (method, scale, omega, omega_schedule)")
    unknown = sorted(set(guidance) - GUIDANCE_KEYS)
    if unknown:
        raise UserError(f"--preset {path}: key guidance.{unknown[0]}: unknown")
    for key, kinds in (("method", str), ("scale", (int, float))):
        if not isinstance(guidance.get(key), kinds) or isinstance(guidance.get(key), bool):
            raise UserError(f"--preset {path}: key guidance.{key}: missing or not a {'name' if kinds is str else 'number'}")
    omega = guidance.get("omega")
    if omega is not None and (isinstance(omega, bool) or not isinstance(omega, (int, float))):
        raise UserError(f"--preset {path}: key guidance.omega: expected a number")
    schedule = guidance.get("omega_schedule", "constant")
    if not isinstance(schedule, str):
        raise UserError(f"--preset {path}: key guidance.omega_schedule: expected a schedule name")
    for key in ("base", "personalization"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise UserError(f"--preset {path}: key {key}: expected a path or model id")
    preset = Preset(
        method=guidance["method"],
        scale=float(guidance["scale"]),
        omega=None if omega is None else float(omega),
        omega_schedule=schedule,
        base=data.get("base"),
        personalization=data.get("personalization"),
        extra={k: v for k, v in data.items() if k not in {"kind", "version", "guidance", "base", "personalization"}},
    )
    try:
        preset.guidance_config()  # the guidance code judges the values (method, ω range, schedule)
    except UserError as e:
        raise UserError(f"--preset {path}: {e}") from None
    return preset
