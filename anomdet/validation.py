"""The data gate: a Great Expectations suite over the labelled records.

Validation runs on the extracted frame rather than in SQL: the frame is what
training will see (after the mapping renamed the user's columns), several checks
need derived columns (stripped length, normalised text, conflicting labels) that
would otherwise be dialect-specific SQL, and the labelled set of a text detector
fits in memory on one machine. Each derived column is a plain pandas expression
next to the expectation that reads it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from anomdet.data import normalise_text

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "text", "label")
MAX_EXAMPLES = 20

# Derived columns -> the record column a person should look at.
_SOURCE = {"text_stripped": "text", "text_key": "text", "label_conflict": "label",
           "is_anomalous": "label", "is_normal": "label", "label_value": "label"}


@dataclass(frozen=True)
class ValidationConfig:
    """Bounds of the data gate."""

    min_rows: int = 100
    min_rows_per_class: int = 10
    text_min_length: int = 1
    text_max_length: int = 20_000
    anomaly_rate_min: float = 0.001
    anomaly_rate_max: float = 0.5
    max_duplicate_text_ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.min_rows < 1 or self.min_rows_per_class < 1:
            raise ValueError("min_rows and min_rows_per_class must be at least 1")
        if not 1 <= self.text_min_length <= self.text_max_length:
            raise ValueError("need 1 <= text_min_length <= text_max_length")
        if not 0 <= self.anomaly_rate_min < self.anomaly_rate_max <= 1:
            raise ValueError("need 0 <= anomaly_rate_min < anomaly_rate_max <= 1")
        if not 0 <= self.max_duplicate_text_ratio <= 1:
            raise ValueError("max_duplicate_text_ratio must be between 0 and 1")


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result, in the words a person needs."""

    expectation: str
    column: str | None
    success: bool
    observed: str
    unexpected_count: int | None
    example_ids: tuple = ()
    check: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"expectation": self.expectation, "check": self.check, "column": self.column,
                "success": self.success,
                "observed": self.observed, "unexpected_count": self.unexpected_count,
                "example_ids": [str(i) for i in self.example_ids]}


@dataclass(frozen=True)
class ValidationReport:
    """All outcomes of one validation, failed first."""

    success: bool
    rows: int
    outcomes: tuple[ExpectationOutcome, ...]
    data_docs_index: str | None = None
    notes: tuple[str, ...] = field(default=())

    def failures(self) -> tuple[ExpectationOutcome, ...]:
        return tuple(o for o in self.outcomes if not o.success)

    def summary(self) -> dict[str, Any]:
        return {"success": self.success, "rows": self.rows, "evaluated": len(self.outcomes),
                "failed": len(self.failures()), "data_docs": self.data_docs_index,
                "failures": [o.as_dict() for o in self.failures()]}

    def to_markdown(self) -> str:
        head = "PASSED" if self.success else "FAILED"
        lines = [f"# Data validation {head}", "",
                 f"{self.rows} labelled records; {len(self.outcomes)} expectations, "
                 f"{len(self.failures())} failed.", ""]
        if self.data_docs_index:
            lines += [f"Great Expectations Data Docs: `{self.data_docs_index}`", ""]
        lines += ["| result | check | expectation | column | observed | unexpected | example ids |",
                  "|---|---|---|---|---|---|---|"]
        for o in self.outcomes:
            ids = ", ".join(str(i) for i in o.example_ids) or "-"
            count = "-" if o.unexpected_count is None else str(o.unexpected_count)
            lines.append(f"| {'pass' if o.success else 'FAIL'} | {o.check} | {o.expectation} | "
                         f"{o.column or '-'} | {o.observed} | {count} | {ids} |")
        return "\n".join(lines)

    def describe_failures(self) -> str:
        lines = []
        for o in self.failures():
            where = f" on column {o.column!r}" if o.column else ""
            ids = f"; example ids: {', '.join(str(i) for i in o.example_ids)}" if o.example_ids \
                else ""
            count = f"; {o.unexpected_count} unexpected" if o.unexpected_count else ""
            lines.append(f"  - {o.check or o.expectation}{where} ({o.expectation}): "
                         f"observed {o.observed}{count}{ids}")
        return "\n".join(lines) or "  (no failures)"


def _derive(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame GE validates: record columns plus derived columns the suite reads."""
    data = frame.copy()
    data["label"] = data["label"].astype(object)
    text = data["text"]
    is_str = text.map(lambda t: isinstance(t, str))
    data["text_stripped"] = text.where(is_str).map(lambda t: t.strip() if isinstance(t, str)
                                                   else None)
    data["text_key"] = text.where(is_str).map(lambda t: normalise_text(t) if isinstance(t, str)
                                              else None)
    numeric = pd.to_numeric(data["label"], errors="coerce")
    valid = numeric.isin([0, 1])
    data["label_value"] = numeric.where(valid)
    data["is_anomalous"] = (numeric == 1).astype(int)
    data["is_normal"] = (numeric == 0).astype(int)
    labels_per_text = data[valid].groupby("text_key")["label_value"].nunique()
    conflicting = set(labels_per_text.index[labels_per_text > 1])
    data["label_conflict"] = data["text_key"].isin(conflicting)
    return data


def build_expectations(config: ValidationConfig) -> list[Any]:
    """The expectations for labelled records, from the configured bounds."""
    import great_expectations as gx

    e = gx.expectations
    c = config
    return [
        e.ExpectTableColumnsToMatchSet(column_set=list(REQUIRED_COLUMNS), exact_match=False,
                                       description="columns id, text, label are present"),
        e.ExpectTableRowCountToBeBetween(min_value=c.min_rows,
                                         description=f"at least {c.min_rows} labelled rows"),
        e.ExpectColumnValuesToNotBeNull(column="id", description="ids are not null"),
        e.ExpectColumnValuesToBeUnique(column="id", description="ids are unique"),
        e.ExpectColumnValuesToNotBeNull(column="text", description="text is not null"),
        e.ExpectColumnValuesToBeOfType(column="text", type_="str", description="text is a string"),
        e.ExpectColumnValueLengthsToBeBetween(
            column="text_stripped", min_value=c.text_min_length, max_value=c.text_max_length,
            description=f"text, stripped, has {c.text_min_length} to {c.text_max_length} "
                        "characters (blank text fails)"),
        e.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1],
                                      description="labels are 0 or 1"),
        e.ExpectColumnMeanToBeBetween(
            column="label_value", min_value=c.anomaly_rate_min, max_value=c.anomaly_rate_max,
            description=f"anomaly rate within [{c.anomaly_rate_min}, {c.anomaly_rate_max}]"),
        # GE has no per-class count expectation: the sum of a 0/1 indicator is that count.
        e.ExpectColumnSumToBeBetween(
            column="is_anomalous", min_value=c.min_rows_per_class,
            description=f"at least {c.min_rows_per_class} anomalous (label 1) rows"),
        e.ExpectColumnSumToBeBetween(
            column="is_normal", min_value=c.min_rows_per_class,
            description=f"at least {c.min_rows_per_class} normal (label 0) rows"),
        e.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column="text_key", min_value=1 - c.max_duplicate_text_ratio,
            description=f"at most {c.max_duplicate_text_ratio:.0%} duplicate texts"),
        e.ExpectColumnValuesToBeInSet(
            column="label_conflict", value_set=[False],
            description="no text carries both labels"),
    ]


def _observed(result: dict[str, Any]) -> str:
    if "observed_value" in result:
        value = result["observed_value"]
        return f"{value:.4f}" if isinstance(value, float) else str(value)
    if "unexpected_percent" in result and result["unexpected_percent"] is not None:
        return f"{result['unexpected_percent']:.2f}% unexpected"
    return "-"


def _outcome(validation_result: Any) -> ExpectationOutcome:
    config = validation_result.expectation_config
    result = validation_result.result or {}
    column = config.kwargs.get("column")
    column = _SOURCE.get(column, column)
    ids = []
    for item in result.get("unexpected_index_list") or []:
        value = item.get("id") if isinstance(item, dict) else item
        value = value.item() if hasattr(value, "item") else value
        if value not in ids:
            ids.append(value)
    observed = _observed(result)
    info = validation_result.exception_info or {}
    if info.get("raised_exception"):
        observed = f"could not be evaluated: {str(info.get('exception_message'))[:200]}"
    return ExpectationOutcome(
        expectation=config.type, column=column, success=bool(validation_result.success),
        observed=observed, unexpected_count=result.get("unexpected_count"),
        example_ids=tuple(ids[:MAX_EXAMPLES]), check=config.description or "",
    )


def _missing_columns_report(frame: pd.DataFrame) -> ValidationReport:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    outcome = ExpectationOutcome("expect_table_columns_to_match_set", None, False,
                                 f"missing column(s) {', '.join(missing)}; present: "
                                 f"{', '.join(map(str, frame.columns))}", None,
                                 check="columns id, text, label are present")
    return ValidationReport(False, len(frame), (outcome,))


def _run(data: pd.DataFrame, config: ValidationConfig,
         docs_dir: Path | None) -> tuple[list[Any], str | None]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (context.data_sources.add_pandas("anomdet").add_dataframe_asset("records")
                 .add_batch_definition_whole_dataframe("labelled"))
    suite = context.suites.add(gx.ExpectationSuite(name="anomdet_labelled_records"))
    for expectation in build_expectations(config):
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="labelled_records", data=batch_def, suite=suite))
    actions = []
    if docs_dir is not None:
        docs_dir.mkdir(parents=True, exist_ok=True)
        context.add_data_docs_site(site_name="anomdet", site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir)}})
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["anomdet"]))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="anomdet_gate", validation_definitions=[definition], actions=actions,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["id"]}))
    run = checkpoint.run(batch_parameters={"dataframe": data})
    results = [r for v in run.run_results.values() for r in v.results]
    index = docs_dir / "index.html" if docs_dir is not None else None
    return results, str(index) if index is not None and index.exists() else None


def validate_labelled(
    frame: pd.DataFrame, config: ValidationConfig | None = None, *,
    data_docs_dir: Path | None = None,
) -> ValidationReport:
    """Validate labelled records (columns id, text, label); never raises on bad data."""
    config = config or ValidationConfig()
    if any(c not in frame.columns for c in REQUIRED_COLUMNS):
        return _missing_columns_report(frame)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    results, docs = _run(_derive(frame), config, data_docs_dir)
    outcomes = sorted((_outcome(r) for r in results),
                      key=lambda o: (o.success, o.expectation, o.column or ""))
    report = ValidationReport(success=all(o.success for o in outcomes), rows=len(frame),
                              outcomes=tuple(outcomes), data_docs_index=docs)
    logger.info("validation %s: %d of %d expectations failed",
                "passed" if report.success else "FAILED", len(report.failures()), len(outcomes))
    return report
