"""Plain-text and markdown views of metrics and decisions, for the CLI and the UI."""

from __future__ import annotations

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


def metrics_table(challenger: dict[str, Any], champion: dict[str, Any] | None) -> list[dict]:
    """Rows of metric | challenger | champion | difference."""
    rows = []
    for name in METRICS_SHOWN:
        c = challenger.get(name)
        b = champion.get(name) if champion else None
        diff = None if c is None or b is None else float(c) - float(b)
        rows.append({"metric": name, "challenger": _fmt(c), "champion": _fmt(b),
                     "difference": _fmt(diff)})
    return rows


def decision_markdown(decision: Decision, challenger: dict[str, Any],
                      champion: dict[str, Any] | None) -> str:
    """The decision, the reason in words, and every check with its numbers."""
    verdict = "PROMOTED" if decision.promote else "NOT PROMOTED"
    lines = [f"# Challenger {verdict}", "", decision.reason, "", "| check | result | detail |",
             "|---|---|---|"]
    for check in decision.checks:
        lines.append(f"| {check.name} | {'pass' if check.passed else 'FAIL'} | {check.detail} |")
    lines += ["", "| metric | challenger | champion | difference |", "|---|---|---|---|"]
    for row in metrics_table(challenger, champion):
        lines.append(f"| {row['metric']} | {row['challenger']} | {row['champion']} | "
                     f"{row['difference']} |")
    return "\n".join(lines)
