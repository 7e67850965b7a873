"""Seeing a sweep: the summary table, the trade-off plot, image grids and one self-contained HTML file.

Confidence intervals are 95% intervals of the mean over images: mean ± t·s/√n with s the sample standard
deviation and t the 0.975 quantile of Student's t with n − 1 degrees of freedom (exact table to 30, then
the Cornish-Fisher expansion, within 1e-3 of the exact value). Images that share a prompt or seed are not
independent draws, so read the bars as a lower bound on the uncertainty of a setting's mean.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from steerguide import methods
from steerguide.errors import UserError
from steerguide.evaluate.metrics import FIDELITY, TEXT, axis_of
from steerguide.evaluate.results import ResultsStore
from steerguide.files import check_writable
from steerguide.typeset import font, mean_ci_text, png_data_uri, wrap

# Two-sided 95% quantiles of Student's t, df = 1..30.
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
SETTING_FIELDS = ("method", "scale", "omega", "omega_schedule", "interval")


def t_quantile_975(df: int) -> float:
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% CI); the half-width is nan for fewer than two values."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile_975(n - 1) * std / math.sqrt(n)


# ----------------------------------------------------------------------------- data


def load_results(folder: str | Path) -> list[dict]:
    folder = Path(folder)
    path = folder / "results.jsonl"
    if not path.is_file():
        raise UserError(f"{str(folder)!r} holds no results.jsonl (run `steerguide sweep` into it first)")
    rows = ResultsStore(path).read()
    if not rows:
        raise UserError(f"{str(path)!r} holds no complete rows yet")
    for row in rows:
        _check_row(path, row)
    return rows


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# What a report reads of each row, and the kinds it must be (a hand-edited or foreign file: one line).
_ROW_FIELDS = {
    "method": (lambda v: isinstance(v, str), "a method name"),
    "scale": (_is_number, "a number"),
    "omega": (lambda v: v is None or _is_number(v), "a number or null"),
    "subject": (lambda v: isinstance(v, str), "a subject name"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "prompt": (lambda v: isinstance(v, str), "a prompt"),
    "prompt_index": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "metrics": (lambda v: isinstance(v, dict), "a mapping metric -> score"),
}


def _check_row(path: Path, row: dict) -> None:
    for name, (ok, kind) in _ROW_FIELDS.items():
        if not ok(row.get(name)):
            raise UserError(
                f"{path}: row {row['key']}: {name} is {row.get(name)!r}, not {kind}; fix or delete that row"
            )
    for metric, value in row["metrics"].items():
        if value is not None and not _is_number(value):
            raise UserError(
                f"{path}: row {row['key']}: metrics.{metric} is {value!r}, not a score (a number or null); "
                "fix or delete that row"
            )


def metric_axes(folder: str | Path, rows: list[dict]) -> dict[str, str]:
    """metric name -> "fidelity" | "text", from sweep.json (written by the sweep) or the built-in names."""
    names = list(dict.fromkeys(k for r in rows for k in r.get("metrics", {})))
    recorded: dict[str, str] = {}
    sweep_json = Path(folder) / "sweep.json"
    if sweep_json.is_file():
        recorded = json.loads(sweep_json.read_text()).get("metric_axes", {}) or {}
    return {n: recorded.get(n, axis_of(n, FIDELITY)) for n in names}


def setting_key(row: dict) -> tuple:
    return tuple(tuple(row.get(f)) if isinstance(row.get(f), list) else row.get(f) for f in SETTING_FIELDS)


def setting_label(row: dict) -> str:
    if row.get("label"):
        return row["label"]
    parts = [row["method"], f"w={row['scale']:g}"]
    if row.get("omega") is not None:
        parts.append(f"ω={row['omega']:g}")
    return " ".join(parts)


@dataclass
class SummaryRow:
    label: str
    method: str
    scale: float
    omega: float | None
    omega_schedule: str | None
    interval: tuple
    n: int
    stats: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> (mean, ci)

    @property
    def curve(self) -> str:
        """The curve this setting belongs to in the trade-off plot: everything but the scale."""
        parts = [self.method]
        if self.omega is not None:
            parts.append(f"ω={self.omega:g}")
        if self.omega_schedule not in (None, "constant"):
            parts.append(str(self.omega_schedule))
        if tuple(self.interval or (0.0, 1.0)) != (0.0, 1.0):
            parts.append(f"[{self.interval[0]:g},{self.interval[1]:g}]")
        return " ".join(parts)


def summarize(rows: list[dict], metrics: Sequence[str] | None = None) -> list[SummaryRow]:
    """Mean ± 95% CI of each metric per guidance setting, pooled over subjects, prompts and seeds."""
    metrics = list(metrics or dict.fromkeys(k for r in rows for k in r.get("metrics", {})))
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(setting_key(row), []).append(row)
    out = []
    for members in groups.values():
        first = members[0]
        stats = {}
        for m in metrics:
            values = [r["metrics"][m] for r in members if r.get("metrics", {}).get(m) is not None]
            stats[m] = mean_ci(values)
        out.append(
            SummaryRow(
                setting_label(first),
                first["method"],
                float(first["scale"]),
                first.get("omega"),
                first.get("omega_schedule"),
                tuple(first.get("interval") or (0.0, 1.0)),
                len(members),
                stats,
            )
        )
    out.sort(key=lambda s: (methods.order_of(s.method), s.curve, s.scale))
    return out


# ----------------------------------------------------------------------------- figures


def tradeoff_plot(summary: list[SummaryRow], x_metric: str, y_metric: str, path: str | Path) -> Path:
    """x = subject fidelity, y = text alignment; a line per curve (method, ω, schedule) through its scales,
    points labelled with w, 95% confidence bars both ways."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=120)
    curves: dict[str, list[SummaryRow]] = {}
    for s in summary:
        curves.setdefault(s.curve, []).append(s)
    for name, points in curves.items():
        points = sorted(points, key=lambda s: s.scale)
        xs = [p.stats[x_metric][0] for p in points]
        ys = [p.stats[y_metric][0] for p in points]
        xerr = [0 if math.isnan(p.stats[x_metric][1]) else p.stats[x_metric][1] for p in points]
        yerr = [0 if math.isnan(p.stats[y_metric][1]) else p.stats[y_metric][1] for p in points]
        line = ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=name, linewidth=1.5)
        for p, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(
                f"w={p.scale:g}",
                (x, y),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=line[0].get_color(),
            )
    ax.set_xlabel(f"subject fidelity: {x_metric} (higher is better)")
    ax.set_ylabel(f"text alignment: {y_metric} (higher is better)")
    ax.set_title("Text alignment vs subject fidelity (mean, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def image_grid(cells: list[list], row_labels: list[str], col_labels: list[str], cell: int = 128):
    """A labelled grid: cells[r][c] is a PIL image or None (missing); small images are upscaled (nearest)."""
    from PIL import Image, ImageDraw

    text_font = font(11)
    left, top, pad = 170, 36, 4
    w = left + len(col_labels) * (cell + pad)
    h = top + len(row_labels) * (cell + pad)
    grid = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(col_labels):
        for k, line in enumerate(wrap(label, cell // 6)[:2]):
            draw.text((left + c * (cell + pad) + 2, 2 + 14 * k), line, fill="black", font=text_font)
    for r, label in enumerate(row_labels):
        for k, line in enumerate(wrap(label, 27)[:8]):
            draw.text((4, top + r * (cell + pad) + 2 + 14 * k), line, fill="black", font=text_font)
        for c, image in enumerate(cells[r]):
            x, y = left + c * (cell + pad), top + r * (cell + pad)
            if image is None:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline="gray")
                continue
            resample = Image.NEAREST if max(image.size) < cell else Image.LANCZOS
            grid.paste(image.convert("RGB").resize((cell, cell), resample), (x, y))
    return grid


def subject_grids(
    folder: Path, rows: list[dict], subject: str, seed: int, max_prompts: int = 8, max_columns: int = 12
) -> tuple[list, list[str]]:
    """Prompts × settings for one subject at one seed, split into grids of at most `max_prompts` rows and
    `max_columns` columns (every setting and prompt appears in one of them). Returns the grids and the
    cells that have no readable image, named."""
    from steerguide.images import TooLarge, open_rgb

    chosen = [r for r in rows if r["subject"] == subject and r["seed"] == seed]
    settings = list(dict.fromkeys(setting_key(r) for r in sorted(chosen, key=_setting_order)))
    prompts = sorted({(r["prompt_index"], r["prompt"]) for r in chosen})
    by_cell = {(r["prompt"], setting_key(r)): r for r in chosen}
    labels = {setting_key(r): setting_label(r) for r in chosen}
    missing: list[str] = []
    images: dict[tuple, object] = {}
    for _, prompt in prompts:
        for s in settings:
            r = by_cell.get((prompt, s))
            path = folder / r["image"] if r else None
            images[(prompt, s)] = None
            if path is None:
                missing.append(f"{labels[s]} × {prompt!r} (no row)")
                continue
            try:
                images[(prompt, s)] = open_rgb(path)
            except TooLarge:  # a blank cell, as for any image that cannot be read, saying why
                missing.append(f"{path} (over Pillow's decompression-bomb limit)")
            except UserError:
                missing.append(str(path))
    grids = []
    for p0 in range(0, len(prompts), max_prompts):
        part = prompts[p0 : p0 + max_prompts]
        for c0 in range(0, len(settings), max_columns):
            cols = settings[c0 : c0 + max_columns]
            cells = [[images[(prompt, s)] for s in cols] for _, prompt in part]
            grids.append(image_grid(cells, [p for _, p in part], [labels[s] for s in cols]))
    return grids, missing


def subject_grid(
    folder: Path, rows: list[dict], subject: str, seed: int, max_prompts: int = 8, max_columns: int = 12
):
    """The first grid of `subject_grids` (the first prompts × the first settings)."""
    return subject_grids(folder, rows, subject, seed, max_prompts, max_columns)[0][0]


def _setting_order(row: dict):
    return (
        methods.order_of(row["method"]),
        str(row.get("omega")),
        str(row.get("omega_schedule")),
        row["scale"],
    )


# ----------------------------------------------------------------------------- report


@dataclass
class Report:
    html: Path
    plots: list[Path]
    grids: list[Path]
    summary: list[SummaryRow]
    metrics: list[str]
    notes: list[str] = field(default_factory=list)  # what the reader should know: split grids, blank cells


def write_report(
    folder: str | Path,
    out: str | Path | None = None,
    max_prompts: int = 8,
    max_columns: int = 12,
    preface_html: str = "",
) -> Report:
    """Write DIR/report/: trade-off plots, grids, summary.json and index.html (self-contained);
    `preface_html` goes first in the page (the demo's picture)."""
    from steerguide import limits

    limits.at_least("--max-prompts", max_prompts, 1)
    limits.at_least("--max-columns", max_columns, 1)
    folder = Path(folder)
    rows = load_results(folder)
    axes = metric_axes(folder, rows)
    metrics = list(axes)
    summary = summarize(rows, metrics)
    out_dir = Path(out) if out else folder / "report"
    check_writable(out_dir, "report folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    fidelity = [m for m in metrics if axes[m] == FIDELITY]
    text = [m for m in metrics if axes[m] == TEXT]
    plots = [
        tradeoff_plot(summary, x, y, out_dir / f"tradeoff_{x}_vs_{y}.png") for y in text for x in fidelity
    ]

    grids, notes = [], []
    for subject in dict.fromkeys(r["subject"] for r in rows):
        seed = min(r["seed"] for r in rows if r["subject"] == subject)
        parts, missing = subject_grids(folder, rows, subject, seed, max_prompts, max_columns)
        for k, grid in enumerate(parts):
            path = out_dir / (f"grid_{subject}.png" if k == 0 else f"grid_{subject}_{k + 1}.png")
            grid.save(path)
            grids.append(path)
        if len(parts) > 1:
            notes.append(
                f"{subject}: {len(parts)} grids (at most {max_prompts} prompts × {max_columns} settings each; "
                "--max-prompts and --max-columns change that)"
            )
        if missing:
            notes.append(
                f"{subject}: {len(missing)} grid cell(s) left blank, no readable image: "
                + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            )

    (out_dir / "summary.json").write_text(
        json.dumps(
            [
                {
                    "label": s.label,
                    "method": s.method,
                    "scale": s.scale,
                    "omega": s.omega,
                    "omega_schedule": s.omega_schedule,
                    "interval": list(s.interval),
                    "n": s.n,
                    "metrics": {m: {"mean": s.stats[m][0], "ci95": s.stats[m][1]} for m in metrics},
                }
                for s in summary
            ],
            indent=2,
            allow_nan=True,
        )
    )

    html_path = out_dir / "index.html"
    html_path.write_text(_html(folder, rows, summary, metrics, axes, plots, grids, notes, preface_html))
    return Report(html_path, plots, grids, summary, metrics, notes)


def _html(folder: Path, rows, summary, metrics, axes, plots, grids, notes=(), preface_html: str = "") -> str:
    esc = html.escape
    subjects = list(dict.fromkeys(r["subject"] for r in rows))
    head = "".join(f"<th>{esc(m)} <small>({axes[m]})</small></th>" for m in metrics)
    body = "".join(
        "<tr><td>"
        + esc(s.label)
        + f"</td><td>{s.n}</td>"
        + "".join(f"<td>{esc(mean_ci_text(*s.stats[m]))}</td>" for m in metrics)
        + "</tr>"
        for s in summary
    )
    plot_html = (
        "".join(
            f'<figure><img src="{png_data_uri(p)}" alt="{esc(p.name)}"><figcaption>{esc(p.name)}'
            "</figcaption></figure>"
            for p in plots
        )
        or "<p>No fidelity/text metric pair to plot.</p>"
    )
    grid_html = "".join(
        f'<h3>{esc(p.stem[5:])}</h3><img class="grid" src="{png_data_uri(p)}" alt="{esc(p.name)}">' for p in grids
    )
    notes_html = "".join(f"<p><em>{esc(n)}</em></p>" for n in notes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>steerguide report: {esc(folder.name)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left}} img.grid{{max-width:100%}} figure{{display:inline-block;margin:0 1em 1em 0}}
</style></head><body>
<h1>steerguide report: {esc(folder.name)}</h1>
<p>{len(rows)} images, {len(subjects)} subject(s) ({esc(", ".join(subjects))}),
{len(summary)} guidance settings.
Means over images with 95% confidence intervals (Student t).</p>
{preface_html}
<h2>Trade-off</h2>{plot_html}
<h2>Summary</h2><table><tr><th>setting</th><th>n</th>{head}</tr>{body}</table>
<h2>Images (prompts × settings, first seed)</h2>{notes_html}{grid_html}
</body></html>
"""
