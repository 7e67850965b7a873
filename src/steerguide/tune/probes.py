"""The probes of a tuning run, one JSON line each in OUT/probes.jsonl: what makes a rerun continue.

A probe's `key` hashes everything that defines its images (the problem's identity: base, personalization,
subject, prompts, seeds, sampling, metrics; and the knob), so a rerun reads back the probes it already
judged and a changed problem never reuses another's. Lines are appended whole under a lock by the sweep's
`ResultsStore` (one `write`, fsync'ed; a torn last line is dropped), so `kill -9` costs at most the probe in
flight and the file never holds a key twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from steerguide.evaluate.results import ResultsStore
from steerguide.tune.search import Judged, Knob


def identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Probe:
    """A knob's per-image scores (prompt-major: prompt i, seed j at i × seeds + j) and what it cost."""

    knob: Knob
    fidelity: tuple[float, ...]
    text: tuple[float, ...]
    seconds: float = 0.0

    @property
    def judged(self) -> Judged:
        return Judged(self.knob, sum(self.fidelity) / len(self.fidelity), sum(self.text) / len(self.text))


class ProbeStore:
    def __init__(self, path: str | Path, identity: dict):
        self.path = Path(path)
        self.problem = identity_hash(identity)
        self._store = ResultsStore(self.path)

    def key(self, knob: Knob) -> str:
        return identity_hash({"problem": self.problem, "knob": knob.to_json()})

    def read(self) -> dict[Knob, Probe]:
        """This problem's probes (another problem's lines in the same file are left alone)."""
        out: dict[Knob, Probe] = {}
        for row in self._store.read():
            if row.get("problem") != self.problem:
                continue
            knob = Knob.from_json(row["knob"])
            out[knob] = Probe(knob, tuple(row["fidelity"]), tuple(row["text"]), float(row.get("seconds", 0)))
        return out

    def others(self) -> int:
        """Lines of other problems (another subject, other prompts or another personalization)."""
        return sum(row.get("problem") != self.problem for row in self._store.read())

    def append(self, probe: Probe) -> bool:
        row = {
            "key": self.key(probe.knob),
            "problem": self.problem,
            "knob": probe.knob.to_json(),
            "label": probe.knob.label,
            "method": probe.knob.method,
            "fidelity": list(probe.fidelity),
            "text": list(probe.text),
            "seconds": probe.seconds,
            "time": time.time(),
        }
        return self._store.append([row]) == 1
