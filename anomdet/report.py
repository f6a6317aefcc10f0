"""Plain-text and markdown views of metrics and decisions, for the CLI and the UI."""

from __future__ import annotations

import html
from typing import Any

from anomdet.promotion import Decision

METRICS_SHOWN = ("f1", "precision", "recall", "pr_auc", "roc_auc", "accuracy")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return str(value)


def _md(text: Any) -> str:
    """Text as markdown shows it literally: HTML escaped, table pipes and newlines kept out."""
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _diff(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def metrics_table(challenger: dict[str, Any], champion: dict[str, Any] | None,
                  baseline: dict[str, Any] | None = None) -> list[dict]:
    """Rows of metric | challenger | champion | difference | baseline | vs baseline."""
    rows = []
    for name in METRICS_SHOWN:
        c = challenger.get(name)
        b = champion.get(name) if champion else None
        r = baseline.get(name) if baseline else None
        rows.append({"metric": name, "challenger": _fmt(c), "champion": _fmt(b),
                     "difference": _fmt(_diff(c, b)), "baseline": _fmt(r),
                     "vs_baseline": _fmt(_diff(c, r))})
    return rows


def decision_markdown(decision: Decision, challenger: dict[str, Any],
                      champion: dict[str, Any] | None,
                      baseline: dict[str, Any] | None = None) -> str:
    """The decision, the reason in words, and every check with its numbers."""
    verdict = "PROMOTED" if decision.promote else "NOT PROMOTED"
    lines = [f"# Challenger {verdict}", "", _md(decision.reason), "",
             "| check | result | detail |", "|---|---|---|"]
    for check in decision.checks:
        lines.append(f"| {_md(check.name)} | {'pass' if check.passed else 'FAIL'} | "
                     f"{_md(check.detail)} |")
    lines += ["", "| metric | challenger | champion | difference | TF-IDF baseline | "
              "vs baseline |", "|---|---|---|---|---|---|"]
    for row in metrics_table(challenger, champion, baseline):
        lines.append(f"| {row['metric']} | {row['challenger']} | {row['champion']} | "
                     f"{row['difference']} | {row['baseline']} | {row['vs_baseline']} |")
    return "\n".join(lines)
