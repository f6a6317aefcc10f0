"""Plain-text and markdown views of metrics and decisions, for the CLI and the UI."""

from __future__ import annotations

import html
from dataclasses import dataclass
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
    """Text as markdown shows it literally: HTML escaped, table pipes and newlines kept out.
    Quotes stay as they are: they are safe in markdown, and the UI shows entities such as
    &#x27; as they are written."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


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
    return "\n".join([f"# Challenger {verdict}", "", _md(decision.reason), ""]
                     + _decision_tables(decision, challenger, champion, baseline))


def _decision_tables(decision: Decision, challenger: dict[str, Any],
                     champion: dict[str, Any] | None,
                     baseline: dict[str, Any] | None) -> list[str]:
    """Every check of the rule with its numbers, then the models' metrics side by side."""
    lines = ["| check | result | detail |", "|---|---|---|"]
    for check in decision.checks:
        lines.append(f"| {_md(check.name)} | {'pass' if check.passed else 'FAIL'} | "
                     f"{_md(check.detail)} |")
    lines += ["", "| metric | challenger | champion | difference | TF-IDF baseline | "
              "vs baseline |", "|---|---|---|---|---|---|"]
    for row in metrics_table(challenger, champion, baseline):
        lines.append(f"| {row['metric']} | {row['challenger']} | {row['champion']} | "
                     f"{row['difference']} | {row['baseline']} | {row['vs_baseline']} |")
    return lines


def approval_markdown(decision: Decision, challenger: dict[str, Any],
                      champion: dict[str, Any] | None, baseline: dict[str, Any] | None,
                      champion_version: int | None, timeout_minutes: float) -> str:
    """What the approval form shows above its fields: the question, the rule's reason,
    its checks and the metrics."""
    against = (f"champion v{champion_version}" if champion_version is not None
               else "no champion yet")
    kept = f"champion v{champion_version} and its flags" if champion_version is not None \
        else "things as they are"
    lines = [f"**Promote this challenger?** It passed the promotion rule against {against}. "
             "Approve to make it champion: its flags replace the champion's. Reject to keep "
             f"{kept}. Without an answer within {timeout_minutes:g} minutes it is rejected; if "
             "the champion changes before the answer, the promotion is abandoned.", "",
             f"**Why it passed:** {_md(decision.reason)}", ""]
    return "\n".join(lines + _decision_tables(decision, challenger, champion, baseline))


# -- One line per run, for the run's state message and the terminal -------------------

def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def promoted_message(version: int, metric: str, challenger: dict[str, Any],
                     champion: dict[str, Any] | None, champion_version: int | None,
                     flagged: int) -> str:
    """`promoted v4: f1 0.981 (+0.012 over v3), 312 records flagged`."""
    value = challenger.get(metric)
    figure = f"{metric} {_fmt3(value)}"
    gain = _diff(value, champion.get(metric) if champion else None)
    if champion_version is None:
        figure += " (first champion)"
    elif gain is not None:
        figure += f" ({gain:+.3f} over v{champion_version})"
    return f"promoted v{version}: {figure}, {flagged} records flagged"


def rejected_message(decision: Decision, metric: str, challenger: dict[str, Any],
                     champion: dict[str, Any] | None) -> str:
    """`rejected: f1 gain +0.004 may be noise (95% interval [-0.010, +0.020])`, or the
    first check that failed, in its own words."""
    boot = decision.bootstrap
    failed = decision.failed()
    if failed and failed[0].name.startswith("bootstrap") and boot and champion:
        gain = _diff(challenger.get(metric), champion.get(metric))
        gain_text = f" {gain:+.3f}" if gain is not None else ""
        return (f"rejected: {metric} gain{gain_text} may be noise ({boot['confidence']:.0%} "
                f"interval [{boot['ci_low']:+.3f}, {boot['ci_high']:+.3f}])")
    if failed:  # the detail names its metric and numbers; the check's id is for machines
        return _short(f"rejected: {failed[0].detail}")
    return _short(f"rejected: {decision.reason}")


def _fmt3(value: Any) -> str:
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return "-"


# -- The run's summary: what was trained, on what, and what changed --------------------

@dataclass(frozen=True)
class RunSummary:
    """Everything a retraining run's summary shows; `promoted_version` is None unless
    the challenger became champion."""

    model_name: str
    run_id: int
    settings: dict[str, Any]  # effective settings: base model, epochs, learning rate, ...
    splits: dict[str, tuple[int, int]]  # split name -> (rows, anomalies)
    training_seconds: float
    history: list[dict[str, Any]]
    challenger: dict[str, Any]
    champion: dict[str, Any] | None
    baseline: dict[str, Any] | None
    champion_version: int | None
    decision: Decision
    message: str
    promoted_version: int | None = None
    flags_written: int | None = None
    threshold: float | None = None
    artifact_uri: str | None = None
    # anomdet_version_quality's rows of the model: its versions' reviewed flags.
    production: tuple[dict[str, Any], ...] = ()


def summary_markdown(summary: RunSummary) -> str:
    """The run in one page: verdict, settings, data, training, comparison, result."""
    lines = [f"# Run {summary.run_id} of {_md(summary.model_name)}: {_md(summary.message)}", "",
             "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {_md(k)} | {_md(_plain(v))} |" for k, v in summary.settings.items()]
    lines += ["", "## Data", "", "| split | rows | anomalies |", "|---|---|---|"]
    lines += [f"| {_md(name)} | {rows} | {anomalies} |"
              for name, (rows, anomalies) in summary.splits.items()]
    lines += ["", "## Training", "", f"Fine-tuning took {_duration(summary.training_seconds)}.",
              ""] + _history_lines(summary.history)
    against = (f"champion v{summary.champion_version}" if summary.champion_version is not None
               else "no champion yet")
    lines += ["", f"## Challenger against {against} and the TF-IDF baseline", "",
              "| metric | challenger | champion | difference | TF-IDF baseline | vs baseline |",
              "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row.values()) + " |"
              for row in metrics_table(summary.challenger, summary.champion, summary.baseline)]
    lines += ["", "## Decision", "", _md(summary.decision.reason), ""] + _result_lines(summary)
    lines += ["", "## Production precision", ""] + production_lines(summary.production)
    return "\n".join(lines)


def production_lines(rows: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[str]:
    """Each served version's reviewed flags (rows of anomdet_version_quality)."""
    if not rows:
        return ["No version has served yet."]
    lines = ["Flags that reviewers labelled since they were flagged: 1 confirms a flag, 0 "
             "dismisses it. The interval is 95% (Wilson).", "",
             "| version | status | flags | reviewed | confirmed | dismissed | precision | "
             "95% interval |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        share = (f" ({row['reviewed_share']:.0%})" if row.get("reviewed_share") is not None
                 else "")
        interval = (f"{_fmt3(row['precision_low'])} - {_fmt3(row['precision_high'])}"
                    if row.get("precision") is not None else "-")
        lines.append(f"| v{row['model_version']} | {_md(row['status'])} | {row['flags']} | "
                     f"{row['reviewed']}{share} | {row['confirmed']} | {row['dismissed']} | "
                     f"{_fmt3(row.get('precision'))} | {interval} |")
    return lines


def _history_lines(history: list[dict[str, Any]]) -> list[str]:
    if not history:
        return ["No validation check ran."]
    lines = ["| check | step | epochs | train loss | validation loss | validation PR-AUC | "
             "samples/s |", "|---|---|---|---|---|---|---|"]
    for row in history:
        lines.append(f"| {row.get('epoch', '-')} | {row.get('step', '-')} | "
                     f"{_plain(row.get('epochs_seen'))} | {_fmt(row.get('train_loss'))} | "
                     f"{_fmt(row.get('val_loss'))} | {_fmt(row.get('val_pr_auc'))} | "
                     f"{_rate(row.get('samples_per_s'))} |")
    return lines


def _result_lines(summary: RunSummary) -> list[str]:
    if summary.promoted_version is None:
        kept = (f"Champion v{summary.champion_version} stays; its flags are unchanged."
                if summary.champion_version is not None else "There is still no champion.")
        return [kept]
    return [f"Version {summary.promoted_version} is champion now, at threshold "
            f"{_fmt(summary.threshold)}; {summary.flags_written} records flagged.", "",
            f"Model files: `{_md(summary.artifact_uri)}`", "",
            f"Flagged records: {_code(flagged_sql(summary.model_name))}"]


def flagged_sql(model_name: str) -> str:
    """The query that lists the champion's flagged records, highest score first."""
    quoted = model_name.replace("'", "''")
    return f"SELECT * FROM anomdet_flagged WHERE model_name = '{quoted}' ORDER BY score DESC;"


def _code(text: str) -> str:
    # Inline code shows its text literally; a backtick inside would end it early.
    return "`" + str(text).replace("`", "'") + "`"


def _plain(value: Any, digits: int = 6) -> str:
    """A setting or figure as people read it: floats without binary noise."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _rate(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def drift_markdown(model_name: str, summary: dict[str, Any]) -> str:
    """This batch against the champion's training data: figures, bounds broken, action."""
    breaches = summary.get("breaches") or []
    verdict = "within bounds" if not breaches else f"{len(breaches)} bound(s) exceeded"
    lines = [f"# Drift of {_md(model_name)}'s records: {verdict}", "",
             "| figure | this batch | champion's training data |", "|---|---|---|"]
    reference = summary.get("reference") or {}
    for name in ("rows", "label_rate", "oov_rate"):
        lines.append(f"| {name} | {_md(_plain(summary.get(name), 4))} | "
                     f"{_md(_plain(reference.get(name), 4))} |")
    if not reference:
        lines += ["", "No champion yet: nothing to compare against."]
    lines += [""] + [f"- {_md(b)}" for b in breaches]
    if breaches:
        lines.append(f"\nOn breach: {_md(summary.get('on_breach', '-'))}.")
    return "\n".join(lines)


def scoring_markdown(model_name: str, version: int | None, threshold: float | None,
                     summary: dict[str, Any]) -> str:
    """A scoring run: what it scored, flagged and skipped, and where to read the flags."""
    lines = [f"# Scoring with {_md(model_name)} v{version if version is not None else '-'}", "",
             f"Threshold {_fmt(threshold)}: {summary.get('scored', 0)} records scored, "
             f"{summary.get('flagged', 0)} flagged, {summary.get('skipped', 0)} skipped "
             "(no text).", ""]
    if summary.get("unkeyed"):
        lines += [f"{summary['unkeyed']} records were not scored: their id is NULL or shared "
                  "with another record.", ""]
    lines.append(f"All flagged records: {_code(flagged_sql(model_name))}")
    return "\n".join(lines)
