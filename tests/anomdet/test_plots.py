"""The precision-recall picture: a valid SVG inside the markdown, figures from scikit-learn."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from anomdet.plots import pr_curve_markdown

SVG = "{http://www.w3.org/2000/svg}"


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    labels = (rng.random(300) < 0.2).astype(int)
    good = labels + rng.normal(0, 0.4, 300)
    weak = 0.3 * labels + rng.normal(0, 0.4, 300)
    return labels, good, weak


def _svg(markdown: str) -> ET.Element:
    [payload] = re.findall(r"\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
    return ET.fromstring(base64.b64decode(payload))


def test_both_models_drawn_with_their_average_precision() -> None:
    labels, good, weak = _data()
    markdown = pr_curve_markdown(labels, good, weak)
    svg = _svg(markdown)
    assert len(svg.findall(f"{SVG}path")) == 2
    for name, scores in (("challenger", good), ("champion", weak)):
        expected = average_precision_score(labels, scores)
        assert f"| {name} | {expected:.4f} |" in markdown
    legend = " ".join(t.text or "" for t in svg.iter(f"{SVG}text"))
    assert f"precision {labels.mean():.3f}" in legend


def test_curve_spans_recall_from_right_edge_to_left_edge() -> None:
    labels, good, _ = _data()
    path = _svg(pr_curve_markdown(labels, good)).find(f"{SVG}path").get("d")
    # Recall 1 sits at the right end of the x axis and the curve ends at recall 0.
    xs = [float(v) for v in re.findall(r"[MH](-?[\d.]+)", path)]
    assert xs[0] == max(xs) and xs[-1] == min(xs) < xs[0]


def test_without_champion_only_the_challenger_is_drawn() -> None:
    labels, good, _ = _data()
    markdown = pr_curve_markdown(labels, good, None)
    assert len(_svg(markdown).findall(f"{SVG}path")) == 1
    assert "champion" not in markdown


@pytest.mark.parametrize(("labels", "scores", "message"), [
    ([0, 1, 2], [0.1, 0.2, 0.3], r"positions \[2\] are not 0 or 1"),
    ([0, 0, 0], [0.1, 0.2, 0.3], "no anomaly"),
    ([0, 1, 1], [0.1, 0.2], "2 values but there are 3 labels"),
    ([0, 1, 1], [0.1, float("nan"), 0.3], r"positions \[1\] are not finite"),
])
def test_bad_inputs_say_what_is_wrong(labels: list, scores: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pr_curve_markdown(labels, scores)
