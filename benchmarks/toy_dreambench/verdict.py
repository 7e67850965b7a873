"""Verdicts on the paper's claims from a toy DreamBench run, with 95% confidence intervals.

    python benchmarks/toy_dreambench/verdict.py [LABEL=]DIR... [--reference DIR] [--json FILE] [--bootstrap 2000]
        [--prompts N]

A DIR may join several folders with "+" (the same grid run on more subjects elsewhere, e.g. a subjects
file drawn by draw_subjects.py): their rows are pooled; pass `--breakdown ''` then (the attribute
breakdown knows the built-in subjects only).

One DIR per personalization strength (run.sh passes default=, half= and triple=): verdicts (a)-(c) for
each, with the half-width of each claim's CI beside it (the issue asks for at most ±0.03), and where a
run has the interval-guided PG variant, the answer to the interval question.

Every number is a mean over images; its 95% CI is a percentile bootstrap that resamples *subjects* with
replacement (images of one subject share its LoRA, prompts and seeds, so subjects are the independent
units). Only subjects with all their rows in every setting are used.

A method is a front, not a point: the Pareto front (higher fidelity and higher text alignment are better)
of its settings, joined by straight segments (a mix of two settings reaches any point between them).
- (a) PG improves text alignment over AG: at each AG setting's fidelity, the best text alignment on PG's
  front minus the AG setting's; also PG minus AG at the same scale w, per ω curve.
- (b) PG improves subject fidelity over CFG at matched text alignment: at each CFG setting's text
  alignment, the best fidelity on PG's front minus the CFG setting's.
- (c) PG's front is not dominated by CFG's or AG's: the additive ε-indicator (Zitzler et al. 2003),
  max over PG settings p of min over CFG and AG settings q of max(p − q) over the two axes: > 0 when some PG
  setting is dominated by no CFG or AG setting (by that margin on at least one axis), < 0 when every PG
  setting is. Beside it: the best fidelity at each text level (PG's front minus the better of CFG's and
  AG's) and hypervolumes (area a front dominates above the worst point of all settings).
Verdicts: "holds" when the CI of the summary difference is above 0, "fails" when it is below 0,
"inconclusive" when it contains 0. PG here is every PG setting guided on all steps (constant ω and
schedules); the interval variant is kept apart:
- (interval) does PG guided only on the first part of the steps (0.8× CFG's denoiser rows for [0, 0.6])
  keep the front of the same PG guided throughout? At each full-PG setting's text alignment, the best
  fidelity on the interval variant's front minus that setting's fidelity, mean over the settings; and the
  same with the axes swapped. Margin fixed in advance: it "keeps" its front when the lower end of both CIs
  is above −0.03, "loses" it when the upper end of either is below −0.03, else "inconclusive". Beside it,
  claim (b) with the interval variant in PG's place.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FID, TXT = "toy_fidelity", "toy_text"
METHOD_ORDER = {"cfg": 0, "ag": 1, "pg": 2}


# ----------------------------------------------------------------------------- data


def load_rows(folder: str | Path, prompts: int | None = None) -> list[dict]:
    """The rows of a sweep folder, or of several joined by "+" (the same grid run on more subjects in
    another folder); each row's image path is made to point into its own folder. With `prompts`, only the
    rows of each subject's first that many prompts (a larger grid's rows read as a reduced grid's)."""
    from steerguide.evaluate.results import ResultsStore

    rows = []
    for part in str(folder).split("+"):
        path = Path(part) / "results.jsonl"
        if not path.is_file():  # one line, exit 2, as for every bad input
            print(f"error: {path} does not exist: run the sweep first", file=sys.stderr)
            raise SystemExit(2)
        rows += [{**r, "image": str(Path(part) / r["image"])} if "image" in r else r
                 for r in ResultsStore(path).read()
                 if prompts is None or r["prompt_index"] < prompts]
    return rows


FULL = (0.0, 1.0)
MARGIN = 0.03  # the interval question's margin, and the CI half-width the claims should reach


def setting_of(row: dict) -> tuple:
    interval = tuple(float(v) for v in row.get("interval") or FULL)
    return row["method"], float(row["scale"]), row.get("omega"), row.get("omega_schedule"), interval


def is_interval(setting: tuple) -> bool:
    return tuple(setting[4]) != FULL


def curve_name(setting: tuple) -> str:
    method, _, omega, schedule, interval = setting
    parts = [method.upper()]
    if omega is not None:
        parts.append(f"ω={omega:g}")
    if schedule not in (None, "constant"):
        parts.append(str(schedule))
    if tuple(interval) != FULL:
        parts.append(f"[{interval[0]:g},{interval[1]:g}]")
    return " ".join(parts)


def setting_name(setting: tuple) -> str:
    return f"{curve_name(setting)} w={setting[1]:g}"


class Table:
    """Per (setting, subject) means of fidelity and text: `means[s, j, k]`, k = 0 fidelity, 1 text."""

    def __init__(self, rows: list[dict]):
        settings = sorted(
            {setting_of(r) for r in rows},
            key=lambda s: (METHOD_ORDER.get(s[0], 9), str(s[2]), str(s[3]), s[1]),
        )
        # Only subjects with every row of every setting: a run cut short leaves its last subject partial.
        count: dict[tuple, int] = {}
        for r in rows:
            count[setting_of(r), r["subject"]] = count.get((setting_of(r), r["subject"]), 0) + 1
        full = max(count.values())
        subjects = sorted({j for _, j in count if all(count.get((s, j), 0) == full for s in settings)})
        if not subjects:
            raise SystemExit("no subject has all its rows in every setting yet")
        self.settings, self.subjects = settings, subjects
        self.dropped = sorted({r["subject"] for r in rows} - set(subjects))
        sums = np.zeros((len(settings), len(subjects), 2))
        counts = np.zeros((len(settings), len(subjects), 1))
        si = {s: i for i, s in enumerate(settings)}
        ji = {j: i for i, j in enumerate(subjects)}
        for r in rows:
            if r["subject"] in ji:
                i, j = si[setting_of(r)], ji[r["subject"]]
                sums[i, j] += (r["metrics"][FID], r["metrics"][TXT])
                counts[i, j] += 1
        self.means = sums / counts
        self.images = int(counts.sum())

    def points(self, subject_index: np.ndarray | None = None) -> np.ndarray:
        """(settings, 2): means over the chosen subjects (all of them by default)."""
        m = self.means if subject_index is None else self.means[:, subject_index]
        return m.mean(axis=1)

    def index(self, predicate) -> list[int]:
        return [i for i, s in enumerate(self.settings) if predicate(s)]


# ----------------------------------------------------------------------------- fronts


def pareto(points: np.ndarray) -> np.ndarray:
    """The non-dominated rows of (n, 2) points (maximize both), sorted by text (column 1) ascending."""
    keep = [p for p in points if not any((q >= p).all() and (q > p).any() for q in points)]
    return np.array(sorted(keep, key=lambda p: (p[1], -p[0])))


def best_at(front: np.ndarray, level: float, given: int) -> float:
    """The best value of the other axis on `front` (joined by segments) among points whose axis `given` is
    >= level; nan when the front never reaches `level`."""
    other = 1 - given
    pts = front[np.argsort(front[:, given])]
    if level > pts[-1, given]:
        return math.nan
    if level <= pts[0, given]:
        return float(pts[:, other].max())
    i = int(np.searchsorted(pts[:, given], level))  # pts[i-1, given] < level <= pts[i, given]
    a, b = pts[i - 1], pts[i]
    frac = (level - a[given]) / (b[given] - a[given])
    on_segment = a[other] + frac * (b[other] - a[other])
    return float(max(on_segment, pts[i:, other].max()))


def hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by `points` and bounded below by `ref` (maximize both axes)."""
    hv, top = 0.0, ref[1]
    for f, t in sorted(points.tolist(), key=lambda p: -p[0]):
        if t > top:
            hv += (f - ref[0]) * (t - top)
            top = t
    return hv


# ----------------------------------------------------------------------------- statistics


class Stat:
    """A statistic of the per-setting means, its point value and bootstrap CI over subjects."""

    def __init__(self, table: Table, fn, boots: np.ndarray):
        self.value = fn(table.points())
        reps = np.array([fn(table.points(b)) for b in boots], dtype=float)
        finite = reps[np.isfinite(reps)]
        self.defined = len(finite) / len(reps)
        self.low, self.high = np.percentile(finite, [2.5, 97.5]) if len(finite) else (math.nan, math.nan)

    @property
    def verdict(self) -> str:
        if not np.isfinite(self.value) or self.defined < 0.95:
            return "undefined"
        return "holds" if self.low > 0 else "fails" if self.high < 0 else "inconclusive"

    @property
    def half_width(self) -> float:
        return float((self.high - self.low) / 2)

    def __str__(self) -> str:
        if not np.isfinite(self.value):
            return "n/a"
        note = "" if self.defined >= 0.999 else f" (defined in {self.defined:.0%} of resamples)"
        return f"{self.value:+.4f} [{self.low:+.4f}, {self.high:+.4f}] (±{self.half_width:.4f}){note}"

    def to_json(self) -> dict:
        return {
            "value": self.value,
            "ci95": [self.low, self.high],
            "half_width": self.half_width,
            "defined": self.defined,
            "verdict": self.verdict,
        }


def _mean_defined(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def analyse(table: Table, n_boot: int = 2000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    boots = rng.integers(0, len(table.subjects), size=(n_boot, len(table.subjects)))
    cfg = table.index(lambda s: s[0] == "cfg")
    ag = table.index(lambda s: s[0] == "ag")
    pg = table.index(lambda s: s[0] == "pg" and not is_interval(s))
    pg_interval = table.index(lambda s: s[0] == "pg" and is_interval(s))
    curves = {
        name: table.index(lambda s, n=name: s[0] == "pg" and curve_name(s) == n)
        for name in dict.fromkeys(curve_name(table.settings[i]) for i in pg)
    }
    out: dict = {
        "subjects": table.subjects,
        "dropped_subjects": table.dropped,
        "images": table.images,
        "settings": {
            setting_name(s): {"fidelity": float(p[0]), "text": float(p[1])}
            for s, p in zip(table.settings, table.points(), strict=True)
        },
    }

    def stat(fn) -> Stat:
        return Stat(table, fn, boots)

    # (a) text alignment of PG's front at each AG setting's fidelity, minus the AG setting's.
    def text_gain_over_ag(pg_idx: list[int], only: int | None = None):
        def fn(p: np.ndarray) -> float:
            front = pareto(p[pg_idx])
            targets = ag if only is None else [only]
            return _mean_defined([best_at(front, p[i, 0], given=0) - p[i, 1] for i in targets])

        return fn

    # Same-scale differences, PG curve minus AG (both methods through the same w).
    def same_scale(curve_idx: list[int], metric: int):
        pairs = [(i, j) for i in curve_idx for j in ag if table.settings[i][1] == table.settings[j][1]]

        def fn(p: np.ndarray) -> float:
            return float(np.mean([p[i, metric] - p[j, metric] for i, j in pairs])) if pairs else math.nan

        return fn, sorted({table.settings[i][1] for i, _ in pairs})

    # (b) fidelity of PG's front at each CFG setting's text alignment, minus the CFG setting's.
    def fid_gain_over_cfg(pg_idx: list[int], only: int | None = None):
        def fn(p: np.ndarray) -> float:
            front = pareto(p[pg_idx])
            targets = cfg if only is None else [only]
            return _mean_defined([best_at(front, p[i, 1], given=1) - p[i, 0] for i in targets])

        return fn

    out["a"] = {
        "pg_front": stat(text_gain_over_ag(pg)),
        "per_ag_setting": {setting_name(table.settings[i]): stat(text_gain_over_ag(pg, i)) for i in ag},
        "per_curve": {n: stat(text_gain_over_ag(idx)) for n, idx in curves.items()},
        "same_scale_text": {},
        "same_scale_fidelity": {},
    }
    for n, idx in curves.items():
        fn, scales = same_scale(idx, 1)
        out["a"]["same_scale_text"][f"{n} − AG, w ∈ {{{', '.join(f'{w:g}' for w in scales)}}}"] = stat(fn)
        fn, scales = same_scale(idx, 0)
        out["a"]["same_scale_fidelity"][f"{n} − AG, w ∈ {{{', '.join(f'{w:g}' for w in scales)}}}"] = stat(fn)
    out["b"] = {
        "pg_front": stat(fid_gain_over_cfg(pg)),
        "per_cfg_setting": {setting_name(table.settings[i]): stat(fid_gain_over_cfg(pg, i)) for i in cfg},
        "per_curve": {n: stat(fid_gain_over_cfg(idx)) for n, idx in curves.items()},
    }

    # (c) additive ε-indicator: by how much the PG setting that sticks out furthest lies beyond every CFG
    # and AG setting (> 0: some PG setting is dominated by none of them), and the reverse.
    def beyond(a_idx: list[int], b_idx: list[int]):
        def fn(p: np.ndarray) -> float:
            return float(max(min(np.max(p[i] - p[j]) for j in b_idx) for i in a_idx))

        return fn

    # Best fidelity at each text level (front joined by segments), PG's minus the better of CFG's and AG's,
    # on 41 levels from the lowest text of any setting to the highest that both sides reach.
    def envelope_gap(p: np.ndarray, reduce) -> float:
        mine, theirs = pareto(p[pg]), pareto(p[cfg + ag])
        levels = np.linspace(p[:, 1].min(), min(mine[:, 1].max(), theirs[:, 1].max()), 41)
        return float(reduce([best_at(mine, t, 1) - best_at(theirs, t, 1) for t in levels]))

    def hv(idx: list[int]):
        def fn(p: np.ndarray) -> float:
            return hypervolume(p[idx], p.min(axis=0))

        return fn

    def hv_gain(p: np.ndarray) -> float:  # area only PG reaches, minus area only CFG ∪ AG reach
        ref = p.min(axis=0)
        return hypervolume(p[pg], ref) - hypervolume(p[cfg + ag], ref)

    # The interval question: the interval variant's front against the same PG (same ω and schedule)
    # guided on every step.
    if pg_interval:
        variant = table.settings[pg_interval[0]]
        same = table.index(
            lambda s: s[0] == "pg" and not is_interval(s) and (s[2], s[3]) == (variant[2], variant[3])
        )

        def gap(given: int):
            def fn(p: np.ndarray) -> float:
                front = pareto(p[pg_interval])
                other = 1 - given
                return _mean_defined([best_at(front, p[i, given], given=given) - p[i, other] for i in same])

            return fn

        fid_gap, txt_gap = stat(gap(1)), stat(gap(0))
        if fid_gap.low > -MARGIN and txt_gap.low > -MARGIN:
            answer = "keeps its front"
        elif fid_gap.high < -MARGIN or txt_gap.high < -MARGIN:
            answer = "loses its front"
        else:
            answer = "inconclusive"
        if min(fid_gap.defined, txt_gap.defined) < 0.95:
            answer = "undefined"
        out["interval"] = {
            "variant": curve_name(variant),
            "against": curve_name(table.settings[same[0]]) if same else None,
            "answer": answer,
            "fidelity_at_matched_text": fid_gap,
            "text_at_matched_fidelity": txt_gap,
            "b_interval_front_over_cfg": stat(fid_gain_over_cfg(pg_interval)),
        }

    out["c"] = {
        "pg_beyond": stat(beyond(pg, cfg + ag)),
        "others_beyond": stat(beyond(cfg + ag, pg)),
        "max_gap": stat(lambda p: envelope_gap(p, max)),
        "mean_gap": stat(lambda p: envelope_gap(p, np.mean)),
        "share_of_levels_pg_best": stat(lambda p: envelope_gap(p, lambda g: np.mean(np.array(g) > 0))),
        "hv_pg_minus_cfg_ag": stat(hv_gain),
        "hypervolume": {
            "PG": stat(hv(pg)),
            "CFG": stat(hv(cfg)),
            "AG": stat(hv(ag)),
            "CFG ∪ AG": stat(hv(cfg + ag)),
        },
    }
    return out


# ----------------------------------------------------------------------------- reference and breakdown


def sample_key(row: dict) -> tuple:
    return row["subject"], row["prompt"], row["seed"]


def reference_summary(
    folder: str | Path, main: Table, n_boot: int, seed: int = 0, samples: set[tuple] | None = None
) -> dict:
    """The base model alone (no personalization) next to the personalized CFG at the same scale, on the
    samples (subject, prompt, seed) of the personalized run only: a reduced run (fewer prompts) is
    compared with the base on its own prompts."""
    rows = load_rows(folder)
    if samples is not None:
        rows = [r for r in rows if sample_key(r) in samples]
    ref = Table(rows)
    common = [s for s in ref.subjects if s in main.subjects]
    rng = np.random.default_rng(seed)
    boots = rng.integers(0, len(common), size=(n_boot, len(common)))
    out = {}
    for s in ref.settings:
        i_ref = ref.settings.index(s)
        ref_means = ref.means[i_ref][[ref.subjects.index(j) for j in common]]
        twin = [k for k, m in enumerate(main.settings) if m == s]  # CFG at the same w, personalized
        main_means = main.means[twin[0]][[main.subjects.index(j) for j in common]] if twin else None
        entry = {}
        for k, metric in enumerate(("fidelity", "text")):
            value = float(ref_means[:, k].mean())
            reps = ref_means[boots, k].mean(axis=1)
            entry[f"base_{metric}"] = [value, *np.percentile(reps, [2.5, 97.5]).tolist()]
            if main_means is not None:
                diff = main_means[:, k] - ref_means[:, k]
                reps = diff[boots].mean(axis=1)
                entry[f"lora_minus_base_{metric}"] = [
                    float(diff.mean()),
                    *np.percentile(reps, [2.5, 97.5]).tolist(),
                ]
        out[f"base model, {setting_name(s)}"] = entry
    return out


def attribute_breakdown(
    folder: str | Path, wanted: list[str], extra: dict[str, str | Path] | None = None,
    prompts: int | None = None,
) -> dict:
    """Per setting, the share of each prompt attribute (background, position, size, color, second object,
    shape) that the images obey, and `copied_bg`: the share of images asked for another background that
    show a background of the subject's training photos instead (the personalization's overfitting)."""
    from PIL import Image

    from steerguide.toyworld import TextJudge, get_subject, parse_caption, read

    judge = TextJudge()
    sources = {"": Path(folder), **{k: Path(v) for k, v in (extra or {}).items()}}
    out: dict[str, dict[str, list]] = {}
    for prefix, root in sources.items():
        for r in load_rows(root, prompts):
            name = (prefix + " " if prefix else "") + setting_name(setting_of(r))
            if prefix == "" and setting_name(setting_of(r)) not in wanted:
                continue
            with Image.open(r["image"]) as im:
                image = im.convert("RGB")
            attrs = out.setdefault(name, {})
            for attribute, ok in judge.breakdown(image, r["prompt"]).items():
                attrs.setdefault(attribute, []).append(ok)
            if parse_caption(r["prompt"]).background is not None:
                copied = read(image).background in get_subject(r["subject"]).photo_backgrounds
                attrs.setdefault("copied_bg", []).append(copied)
    return {name: {a: float(np.mean(v)) for a, v in attrs.items()} for name, attrs in out.items()}


# ----------------------------------------------------------------------------- printing


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _ci(v: list[float], signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(v[0])} [{f.format(v[1])}, {f.format(v[2])}]"


def render(result: dict) -> str:
    parts = [
        f"{result['images']} images, {len(result['subjects'])} subjects ({', '.join(result['subjects'])})"
        + (
            f"; left out (incomplete): {', '.join(result['dropped_subjects'])}"
            if result["dropped_subjects"]
            else ""
        ),
        "95% CIs: percentile bootstrap over subjects.",
        "",
    ]
    a, b, c = result["a"], result["b"], result["c"]

    def verdict(stat: Stat) -> str:
        ok = "within" if stat.half_width <= MARGIN else "WIDER than"
        return f"**{stat.verdict}** (95% CI ±{stat.half_width:.3f}, {ok} ±{MARGIN})"

    parts += [
        f"(a) PG improves text alignment over AG: {verdict(a['pg_front'])}",
        f"    text of PG's front at AG's fidelity − AG's text, mean over AG settings: {a['pg_front']}",
    ]
    parts += [f"    at {k}: {v}" for k, v in a["per_ag_setting"].items()]
    parts += [f"    PG curve {k} alone: {v}" for k, v in a["per_curve"].items()]
    parts += [f"    same w, text: {k}: {v}" for k, v in a["same_scale_text"].items()]
    parts += [f"    same w, fidelity: {k}: {v}" for k, v in a["same_scale_fidelity"].items()]
    parts += [
        "",
        f"(b) PG improves fidelity over CFG at matched text alignment: {verdict(b['pg_front'])}",
        f"    fidelity of PG's front at CFG's text − CFG's fidelity, mean over CFG settings: {b['pg_front']}",
    ]
    parts += [f"    at {k}: {v}" for k, v in b["per_cfg_setting"].items()]
    parts += [f"    PG curve {k} alone: {v}" for k, v in b["per_curve"].items()]
    parts += [
        "",
        f"(c) PG's front is not dominated by CFG's or AG's: {verdict(c['pg_beyond'])}",
        f"    ε: how far the most outlying PG setting lies beyond all CFG and AG settings: {c['pg_beyond']}",
        f"    ε the other way (CFG/AG settings beyond all PG settings): {c['others_beyond']}",
        f"    best fidelity at a text level, PG − max(CFG, AG), largest over levels: {c['max_gap']}",
        f"    same, mean over levels: {c['mean_gap']}",
        f"    share of text levels where PG's front is best: {c['share_of_levels_pg_best']}",
        f"    hypervolume PG − hypervolume CFG ∪ AG: {c['hv_pg_minus_cfg_ag']}",
    ]
    parts += [f"    hypervolume {k}: {v}" for k, v in c["hypervolume"].items()]
    if "interval" in result:
        i = result["interval"]
        parts += [
            "",
            f"(interval) {i['variant']} against {i['against']} guided on every step: **{i['answer']}** "
            f"(margin {MARGIN})",
            f"    fidelity of its front at {i['against']}'s text − that fidelity: {i['fidelity_at_matched_text']}",
            f"    text of its front at {i['against']}'s fidelity − that text: {i['text_at_matched_fidelity']}",
            f"    (b) with it in PG's place, fidelity over CFG at matched text: {i['b_interval_front_over_cfg']}",
        ]
    rows = [[k, f"{v['fidelity']:.4f}", f"{v['text']:.4f}"] for k, v in result["settings"].items()]
    parts += ["", _table(["setting", "fidelity", "text"], rows)]
    if "reference" in result:
        parts += ["", "Base model alone (no personalization), mean [95% CI]:"]
        for k, v in result["reference"].items():
            line = f"    {k}: fidelity {_ci(v['base_fidelity'])}, text {_ci(v['base_text'])}"
            if "lora_minus_base_text" in v:
                line += (
                    f"; personalized (LoRA) − base at the same setting: fidelity "
                    f"{_ci(v['lora_minus_base_fidelity'], True)}, text {_ci(v['lora_minus_base_text'], True)}"
                )
            parts.append(line)
    if "breakdown" in result:
        attributes = sorted({a for v in result["breakdown"].values() for a in v})
        rows = [
            [k, *(f"{v.get(a, math.nan):.3f}" for a in attributes)] for k, v in result["breakdown"].items()
        ]
        parts += ["", "Share of prompt attributes obeyed:", _table(["setting", *attributes], rows)]
    return "\n".join(parts)


def _jsonable(obj):
    if isinstance(obj, Stat):
        return obj.to_json()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def summary_table(results: dict[str, dict]) -> str:
    """One line per strength: each claim's verdict, estimate and CI half-width."""

    def cell(stat: Stat) -> str:
        return (
            f"{stat.verdict} {stat.value:+.3f} ±{stat.half_width:.3f}" if np.isfinite(stat.value) else "n/a"
        )

    rows = []
    for label, r in results.items():
        interval = r.get("interval")
        rows.append(
            [
                label,
                str(len(r["subjects"])),
                cell(r["a"]["pg_front"]),
                cell(r["b"]["pg_front"]),
                cell(r["c"]["pg_beyond"]),
                interval["answer"] if interval else "not run",
            ]
        )
    return _table(["strength", "subjects", "(a)", "(b)", "(c)", "interval"], rows)


def parse_runs(specs: list[str]) -> dict[str, Path]:
    """`LABEL=DIR` or `DIR` (labelled by its folder name), in the order given."""
    runs: dict[str, Path] = {}
    for spec in specs:
        label, sep, folder = spec.partition("=")
        if not sep:
            label, folder = Path(spec).name, spec
        runs[label] = Path(folder)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="[LABEL=]DIR[+DIR...]: one sweep (its folders pooled) per personalization strength")
    parser.add_argument("--reference", help="sweep folder of the base model alone (config-base.yaml)")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument(
        "--breakdown",
        default="CFG w=3,CFG w=7.5,AG ω=0 w=3,PG ω=0 w=3,PG ω=0.5 w=3,PG ω=0.5 w=7.5",
        help="settings whose attribute breakdown to print for the first run ('' for none)",
    )
    parser.add_argument(
        "--prompts", type=int,
        help="read only each subject's first N prompts (a larger grid's rows as the reduced grid's)",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.prompts is not None and args.prompts < 1:
        parser.error(f"--prompts must be at least 1, got {args.prompts}")
    has_reference = bool(args.reference) and all(
        Path(part, "results.jsonl").is_file() for part in args.reference.split("+")
    )
    results: dict[str, dict] = {}
    for k, (label, folder) in enumerate(parse_runs(args.runs).items()):
        rows = load_rows(folder, args.prompts)
        table = Table(rows)
        result = analyse(table, args.bootstrap)
        if has_reference:
            samples = {sample_key(r) for r in rows}
            result["reference"] = reference_summary(args.reference, table, args.bootstrap, samples=samples)
        if args.breakdown and k == 0:
            extra = {"base model": args.reference} if has_reference else None
            result["breakdown"] = attribute_breakdown(folder, args.breakdown.split(","), extra, args.prompts)
        results[label] = result
        print(f"## {label} ({folder})\n\n{render(result)}\n")
    if len(results) > 1:
        print("## Verdicts by personalization strength\n")
    print(summary_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(_jsonable(results), indent=1, allow_nan=True))


if __name__ == "__main__":
    main()
