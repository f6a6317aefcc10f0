"""Precision-recall curves of the challenger and champion as a self-contained picture.

The picture goes into a Prefect markdown artifact, whose UI renders a markdown image
as an `<img>` element: a `data:` URL keeps it inside the artifact, with no file server
or object store to host it (an image artifact would need a URL that the browser can
reach). The SVG is written by hand because no plotting library is a dependency of the
project, and a line chart of two step curves is small enough to draw directly.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np

logger = logging.getLogger(__name__)

# Plot geometry in SVG user units: the plotting area and the margins around it.
# The legend sits under the x axis, where no curve can run through it.
_WIDTH, _HEIGHT = 520, 420
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 16, 104
_COLOURS = {"challenger": "#1f6feb", "champion": "#d9480f"}


@dataclass(frozen=True)
class PRCurve:
    """One model's precision-recall curve on a test set."""

    name: str
    precision: np.ndarray
    recall: np.ndarray
    average_precision: float


def _check_inputs(labels: np.ndarray, scores: np.ndarray, name: str) -> None:
    if scores.shape != labels.shape:
        raise ValueError(f"{name} scores have {scores.size} values but there are "
                         f"{labels.size} labels; score the same test rows as the labels")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(f"{name} scores at positions {bad[:10].tolist()} are not finite "
                         "numbers; every test row needs a score")


def pr_curves(labels: Sequence[int] | np.ndarray, challenger_scores: Sequence[float] | np.ndarray,
              champion_scores: Sequence[float] | np.ndarray | None = None) -> list[PRCurve]:
    """The challenger's (and the champion's) precision-recall curve on the same labels."""
    # Imported here: a scoring run imports this module's tasks, and sklearn costs it a
    # second of start-up that only a retraining run's report needs.
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError("labels must be a non-empty one-dimensional sequence of 0/1")
    odd = np.flatnonzero(~np.isin(y, (0, 1)))
    if odd.size:
        raise ValueError(f"labels at positions {odd[:10].tolist()} are not 0 or 1; "
                         "pass the test split's binary labels (1 = anomaly)")
    if not y.any():
        raise ValueError("the labels hold no anomaly (no 1); a precision-recall curve "
                         "needs at least one positive test row")
    curves = []
    for name, scores in (("challenger", challenger_scores), ("champion", champion_scores)):
        if scores is None:
            continue
        s = np.asarray(scores, dtype=float)
        _check_inputs(y, s, name)
        precision, recall, _ = precision_recall_curve(y, s)
        curves.append(PRCurve(name, precision, recall, float(average_precision_score(y, s))))
    return curves


def _x(recall: float) -> float:
    return _LEFT + recall * (_WIDTH - _LEFT - _RIGHT)


def _y(precision: float) -> float:
    return _HEIGHT - _BOTTOM - precision * (_HEIGHT - _TOP - _BOTTOM)


def _step_path(curve: PRCurve) -> str:
    """SVG path of the curve as steps: flat precision until the next recall level.

    This is the interpolation average precision sums over; straight lines between the
    points would overstate the area. Repeated pixels are dropped to keep the text small.
    """
    xs = [round(_x(r), 1) for r in curve.recall]
    ys = [round(_y(p), 1) for p in curve.precision]
    parts = [f"M{xs[0]},{ys[0]}"]
    last_x, last_y = xs[0], ys[0]
    for x, y in zip(xs[1:], ys[1:], strict=True):
        if x != last_x:
            parts.append(f"H{x}")
        if y != last_y:
            parts.append(f"V{y}")
        last_x, last_y = x, y
    return "".join(parts)


def _axes() -> list[str]:
    """Grid, tick labels and axis titles of the unit square."""
    items = []
    for tick in np.linspace(0, 1, 6):
        x, y = _x(tick), _y(tick)
        items.append(f'<line x1="{x:.1f}" y1="{_y(0):.1f}" x2="{x:.1f}" y2="{_y(1):.1f}" '
                     'stroke="#d0d7de" stroke-width="1"/>')
        items.append(f'<line x1="{_x(0):.1f}" y1="{y:.1f}" x2="{_x(1):.1f}" y2="{y:.1f}" '
                     'stroke="#d0d7de" stroke-width="1"/>')
        items.append(f'<text x="{x:.1f}" y="{_y(0) + 16:.1f}" text-anchor="middle">'
                     f"{tick:.1f}</text>")
        items.append(f'<text x="{_x(0) - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{tick:.1f}</text>")
    mid_x, mid_y = _x(0.5), _y(0.5)
    items.append(f'<text x="{mid_x:.1f}" y="{_y(0) + 34:.1f}" text-anchor="middle">recall</text>')
    items.append(f'<text x="14" y="{mid_y:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {mid_y:.1f})">precision</text>')
    return items


def _legend_row(y: float, colour: str, dashes: str, label: str) -> str:
    dash = f' stroke-dasharray="{dashes}"' if dashes else ""
    return (f'<line x1="{_x(0):.1f}" y1="{y:.1f}" x2="{_x(0) + 28:.1f}" y2="{y:.1f}" '
            f'stroke="{colour}" stroke-width="2"{dash}/>'
            f'<text x="{_x(0) + 36:.1f}" y="{y + 4:.1f}">{label}</text>')


def pr_curve_svg(curves: Sequence[PRCurve], prevalence: float) -> str:
    """A standalone SVG document drawing the curves over the no-skill line at `prevalence`."""
    items = _axes()
    base = _y(prevalence)
    items.append(f'<line x1="{_x(0):.1f}" y1="{base:.1f}" x2="{_x(1):.1f}" y2="{base:.1f}" '
                 'stroke="#6e7781" stroke-dasharray="4 4" stroke-width="1"/>')
    legend_y = _y(0) + 54
    for i, curve in enumerate(curves):
        colour = _COLOURS.get(curve.name, "#57606a")
        items.append(f'<path d="{_step_path(curve)}" fill="none" stroke="{colour}" '
                     'stroke-width="2"/>')
        label = escape(f"{curve.name} (average precision {curve.average_precision:.3f})")
        items.append(_legend_row(legend_y + 16 * i, colour, "", label))
    items.append(_legend_row(legend_y + 16 * len(curves), "#6e7781", "4 4",
                             f"no skill: flag everything (precision {prevalence:.3f})"))
    body = "\n".join(items)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
            f'viewBox="0 0 {_WIDTH} {_HEIGHT}" font-family="sans-serif" font-size="12" '
            f'fill="#24292f">\n<rect width="100%" height="100%" fill="#ffffff"/>\n{body}\n</svg>')


def pr_curve_markdown(labels: Sequence[int] | np.ndarray,
                      challenger_scores: Sequence[float] | np.ndarray,
                      champion_scores: Sequence[float] | np.ndarray | None = None) -> str:
    """Markdown with the precision-recall picture of both models and their average precision.

    `labels` are the test split's 0/1 labels (1 = anomaly) and each score array holds a
    model's anomaly scores for the same rows in the same order; leave `champion_scores`
    out when there is no champion yet.
    """
    curves = pr_curves(labels, challenger_scores, champion_scores)
    y = np.asarray(labels)
    prevalence = float(y.mean())
    svg = pr_curve_svg(curves, prevalence)
    url = "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")
    rows = [f"| {c.name} | {c.average_precision:.4f} |" for c in curves]
    return "\n".join([
        "### Precision-recall on the test split",
        "",
        f"![Precision-recall curves of {' and '.join(c.name for c in curves)}]({url})",
        "",
        f"{int(y.sum())} anomalies in {y.size} test rows; the dashed line is the "
        "precision of flagging everything.",
        "",
        "| model | average precision |",
        "|---|---|",
        *rows,
    ])
