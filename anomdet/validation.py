"""The data gate: a Great Expectations suite run over labelled records before training.

The frame arrives with the standard columns `id`, `text` and `label`. A few checks
need a value GE cannot compute from a raw column (the length of the stripped text,
the label as a number, how many labels one text carries); those are added as derived
columns next to the record columns and validated by ordinary GE expectations, so
every check, derived or not, appears in GE's results and Data Docs.
"""

from __future__ import annotations

import html
import logging
import numbers
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from anomdet.data import normalise_text
from db.records import plain

if TYPE_CHECKING:
    import great_expectations as gx

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "text", "label")
MAX_EXAMPLE_IDS = 20
SUITE_NAME = "anomdet_labelled_records"
DOCS_SITE_NAME = "anomdet_local_site"

# Derived columns, validated like any other column.
STRIPPED_LENGTH = "text_stripped_length"  # characters of the text without surrounding blanks
LABEL_VALUE = "label_value"  # the label as 0/1, null where the label is not a valid class
TEXT_KEY = "text_key"  # the text in the form under which two texts count as the same
LABELS_PER_TEXT = "labels_per_text"  # distinct valid labels among records sharing the text key
# Carried in the per-class expectation's meta so its outcome can name both class counts.
LABELLED_ROWS_META = "labelled_rows"

# Longest rendering of one offending value in a message: a 1 MB text must not flood a log.
_VALUE_CHARS = 40
_VALUES_SHOWN = 3

# What to do about a failure, by (expectation, column): the message says how to fix it.
_HINTS: dict[tuple[str, str | None], str] = {
    ("expect_column_to_exist", "id"): "map the records' key column to `id`",
    ("expect_column_to_exist", "text"): "map the records' text column to `text`",
    ("expect_column_to_exist", "label"): "map the records' label column to `label`",
    ("expect_table_row_count_to_be_between", None): "label more records or lower min_rows",
    ("expect_column_values_to_not_be_null", "id"): "give every record an id",
    ("expect_column_values_to_be_unique", "id"): "make record ids unique",
    ("expect_column_values_to_not_be_null", "text"): "fill in or drop records without text",
    ("expect_column_values_to_be_of_type", "text"): "store text as strings",
    ("expect_column_values_to_be_between", STRIPPED_LENGTH):
        "fix blank or oversized texts, or change text_min_length/text_max_length",
    ("expect_column_values_to_not_be_null", "label"): "label every record 0 or 1",
    ("expect_column_values_to_be_in_set", "label"): "labels must be 0 (normal) or 1 (anomalous)",
    ("expect_column_mean_to_be_between", LABEL_VALUE):
        "check the labelling, or change anomaly_rate_min/anomaly_rate_max",
    ("expect_column_sum_to_be_between", LABEL_VALUE):
        "label more records of the scarce class, or lower min_rows_per_class",
    ("expect_column_proportion_of_unique_values_to_be_between", TEXT_KEY):
        "remove duplicate texts, or raise max_duplicate_text_ratio",
    ("expect_column_values_to_be_between", LABELS_PER_TEXT):
        "give every copy of a text the same label",
}


@dataclass(frozen=True)
class ValidationConfig:
    """Bounds of the data gate, built by `anomdet.settings.ValidationSettings.config()`,
    which holds the defaults."""

    min_rows: int
    min_rows_per_class: int
    text_min_length: int  # characters after stripping whitespace, so blank text fails
    text_max_length: int  # characters
    anomaly_rate_min: float
    anomaly_rate_max: float
    max_duplicate_text_ratio: float

    def __post_init__(self) -> None:
        counts = ("min_rows", "min_rows_per_class", "text_min_length", "text_max_length")
        for name in counts:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"ValidationConfig.{name} must be a whole number >= 0, "
                                 f"got {value!r}")
        if self.text_min_length > self.text_max_length:
            raise ValueError(f"ValidationConfig.text_min_length ({self.text_min_length}) exceeds "
                             f"text_max_length ({self.text_max_length}); lower the minimum or "
                             "raise the maximum")
        for name in ("anomaly_rate_min", "anomaly_rate_max", "max_duplicate_text_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not 0 <= value <= 1:
                raise ValueError(f"ValidationConfig.{name} must be a share between 0 and 1, "
                                 f"got {value!r}")
        if self.anomaly_rate_min > self.anomaly_rate_max:
            raise ValueError(f"ValidationConfig.anomaly_rate_min ({self.anomaly_rate_min}) exceeds "
                             f"anomaly_rate_max ({self.anomaly_rate_max}); swap or widen them")


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's result in the words a person needs."""

    expectation: str  # GE expectation type, e.g. "expect_column_values_to_not_be_null"
    column: str | None
    success: bool
    observed: str
    unexpected_count: int | None
    example_ids: tuple = ()  # up to MAX_EXAMPLE_IDS offending record ids

    def sort_key(self) -> tuple[bool, str, str, str]:
        """Failed first, then by expectation and column: stable across runs."""
        return (self.success, self.expectation, self.column or "", self.observed)

    def hint(self) -> str | None:
        """How to fix this expectation's failure, where there is a standing answer."""
        return _HINTS.get((self.expectation, self.column))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {"expectation": self.expectation, "column": self.column,
                "success": self.success, "observed": self.observed,
                "unexpected_count": self.unexpected_count,
                "example_ids": [_json_id(i) for i in self.example_ids]}


@dataclass(frozen=True)
class ValidationReport:
    """Every expectation's outcome for one batch of labelled records."""

    success: bool
    rows: int
    outcomes: tuple[ExpectationOutcome, ...]  # failed first, then by expectation and column
    data_docs_index: str | None = None

    def failures(self) -> tuple[ExpectationOutcome, ...]:
        """The outcomes that failed, in report order."""
        return tuple(o for o in self.outcomes if not o.success)

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable figures and the failures, for the runs table."""
        return {"success": self.success, "rows": self.rows, "evaluated": len(self.outcomes),
                "failed": len(self.failures()),
                "failures": [o.to_dict() for o in self.failures()],
                "data_docs_index": self.data_docs_index}

    def to_markdown(self) -> str:
        """A heading with PASSED/FAILED and one table row per expectation."""
        verdict = "PASSED" if self.success else "FAILED"
        lines = [f"## Data validation {verdict}", "",
                 f"{self.rows} records; {len(self.outcomes)} expectations evaluated, "
                 f"{len(self.failures())} failed.", ""]
        if self.data_docs_index:
            lines += [f"Great Expectations Data Docs: `{self.data_docs_index}`", ""]
        # Example ids go in a list under the table: a wide id column pushes the
        # table past the width of the Prefect UI's artifact pane.
        lines += ["| result | expectation | column | observed | unexpected |",
                  "| --- | --- | --- | --- | --- |"]
        for o in self.outcomes:
            cells = ["ok" if o.success else "**FAILED**", o.expectation, o.column or "-",
                     o.observed, "-" if o.unexpected_count is None else str(o.unexpected_count)]
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        failed_with_ids = [o for o in self.failures() if o.example_ids]
        if failed_with_ids:
            lines += ["", "### Example record ids of failed expectations", ""]
            for o in failed_with_ids:
                ids = ", ".join(str(i) for i in o.example_ids)
                lines.append(f"- {_md_cell(o.expectation)} [{o.column or '-'}]: {_md_cell(ids)}")
        return "\n".join(lines) + "\n"

    def describe_failures(self) -> str:
        """Plain text, one failure per line with ids and the fix, for stderr or an exception."""
        if self.success:
            return f"all {len(self.outcomes)} expectations passed on {self.rows} records"
        lines = []
        for o in self.failures():
            where = f" [{o.column}]" if o.column else ""
            line = f"- {o.expectation}{where}: {o.observed}"
            if o.example_ids:
                line += "; ids: " + ", ".join(str(i) for i in o.example_ids)
            if o.hint():
                line += f" ({o.hint()})"
            lines.append(line)
        if self.data_docs_index:
            lines.append(f"Data Docs: {self.data_docs_index}")
        return "\n".join(lines)


def _json_id(value: Any) -> Any:
    # Ids reach the runs table as JSON: numbers and strings stay, anything else is shown.
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _md_cell(text: str) -> str:
    # Record values are data: HTML in them must show as text in the Prefect UI.
    return html.escape(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _short(value: Any) -> str:
    value = plain(value)  # NaN too is None
    if value is None:
        return "null"  # how a missing value reads in SQL, not pandas' nan
    text = repr(value)
    return text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 3] + "..."


def _label_value(value: Any) -> int | None:
    # Mirrors ExpectColumnValuesToBeInSet([0, 1]) on an object column (1.0 and True count as
    # 1, "1" does not), while anything unhashable or array-like simply is no valid label.
    try:
        if isinstance(value, numbers.Number) and value in (0, 1):
            return int(value)
    except (TypeError, ValueError):
        pass
    return None


def _is_missing(value: Any) -> bool:
    # pd.isna answers element-wise for a list or an array; a record's value is one item.
    return value is None or value is pd.NA or value is pd.NaT or (
        isinstance(value, float) and value != value)


def _labels_per_text(keys: pd.Series, labels: pd.Series) -> pd.Series:
    known = pd.DataFrame({"key": keys, "label": labels}).dropna()
    per_key = known.groupby("key")["label"].nunique()
    return keys.map(per_key).astype("Int64")


def _prepare_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame GE validates: the records (label as object) plus the derived columns.

    Missing record columns stay missing, so their expectations fail by name; the derived
    columns are then null and their expectations pass vacuously.
    """
    data = frame.reset_index(drop=True).copy()
    empty = pd.Series([None] * len(data), dtype=object)
    # As objects, GE checks type and set membership value by value and names each offending
    # id; mixed types (2, -1, "yes", a number among texts) reach it as they are.
    for column in ("text", "label"):
        if column in data.columns:
            data[column] = data[column].astype(object)
    text = data["text"] if "text" in data.columns else empty
    label = data["label"] if "label" in data.columns else empty
    data[STRIPPED_LENGTH] = text.map(
        lambda t: len(t.strip()) if isinstance(t, str) else None).astype("Int64")
    # Non-string texts get a key too (training would read them as their str()), so a
    # column of numbers is judged on duplicates by its values rather than as all-missing.
    data[TEXT_KEY] = text.map(lambda t: None if _is_missing(t) else normalise_text(str(t)))
    data[LABEL_VALUE] = label.map(_label_value).astype("Int64")
    data[LABELS_PER_TEXT] = _labels_per_text(data[TEXT_KEY], data[LABEL_VALUE])
    return data


def _expectations(config: ValidationConfig, rows: int) -> list[gx.expectations.Expectation]:
    import great_expectations as gx

    e = gx.expectations
    per_class = config.min_rows_per_class
    return [
        *(e.ExpectColumnToExist(column=c) for c in REQUIRED_COLUMNS),
        e.ExpectTableRowCountToBeBetween(min_value=config.min_rows),
        e.ExpectColumnValuesToNotBeNull(column="id"),
        e.ExpectColumnValuesToBeUnique(column="id"),
        e.ExpectColumnValuesToNotBeNull(column="text"),
        e.ExpectColumnValuesToBeOfType(column="text", type_="str"),
        # ExpectColumnValueLengthsToBeBetween counts raw characters, so '   ' would pass a
        # minimum of 1; the stripped length, derived per record, is what the bound means.
        e.ExpectColumnValuesToBeBetween(column=STRIPPED_LENGTH, min_value=config.text_min_length,
                                        max_value=config.text_max_length),
        e.ExpectColumnValuesToNotBeNull(column="label"),
        e.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]),
        # Over valid labels only (invalid ones are null here and reported above).
        e.ExpectColumnMeanToBeBetween(column=LABEL_VALUE, min_value=config.anomaly_rate_min,
                                      max_value=config.anomaly_rate_max),
        # GE has no per-class count expectation. With 0/1 labels the sum is the number of
        # anomalies and `rows - sum` the number of normal records, so one sum bounded by
        # [k, rows - k] demands k of each class. When rows < 2k the bounds cross and the
        # expectation fails, as it should: both classes cannot have k records.
        e.ExpectColumnSumToBeBetween(column=LABEL_VALUE, min_value=per_class,
                                     max_value=rows - per_class,
                                     meta={LABELLED_ROWS_META: rows}),
        # The split keeps equal normalised texts together, so duplicates are counted on the
        # same key; the unique proportion is 1 - the duplicate share.
        e.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column=TEXT_KEY, min_value=1 - config.max_duplicate_text_ratio),
        e.ExpectColumnValuesToBeBetween(column=LABELS_PER_TEXT, max_value=1),
    ]


def build_suite(config: ValidationConfig, rows: int) -> gx.ExpectationSuite:
    """The expectation suite for labelled records.

    `rows` is the number of records with a valid 0/1 label: the per-class bound is
    derived from it (see the comment on the sum expectation).
    """
    import great_expectations as gx

    expectations = _expectations(config, rows)
    # Passed to the constructor, which needs no data context; it drops (and only logs) an
    # expectation it cannot accept, so a shorter suite means the gate would be incomplete.
    suite = gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)
    if len(suite.expectations) != len(expectations):
        raise ValueError(f"the validation suite accepted {len(suite.expectations)} of "
                         f"{len(expectations)} expectations; check ValidationConfig {config}")
    return suite


@contextmanager
def _quiet_great_expectations() -> Iterator[None]:
    # GE announces temporary sites, closures it skips and metric computations at INFO, and
    # one of its modules pins its own logger to INFO; a pipeline log needs only the verdict,
    # which this module logs itself. Levels are restored afterwards.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    root = logging.getLogger("great_expectations")
    saved = {root: root.level}
    root.setLevel(max(root.level, logging.WARNING))
    try:
        import great_expectations  # noqa: F401  (its loggers exist once it is imported)

        for name in list(logging.root.manager.loggerDict):
            child = logging.getLogger(name) if name.startswith("great_expectations.") else None
            if child is not None and logging.NOTSET < child.level < logging.WARNING:
                saved[child] = child.level
                child.setLevel(logging.WARNING)
        yield
    finally:
        for gx_logger, level in saved.items():
            gx_logger.setLevel(level)


def _result_format(has_id: bool) -> dict[str, Any]:
    # COMPLETE returns every offending row; naming `id` makes GE report record ids rather
    # than row positions. Without an id column GE would fail every row check on the missing
    # index column, hiding the real findings, so positions are used instead.
    if has_id:
        return {"result_format": "COMPLETE", "unexpected_index_column_names": ["id"]}
    return {"result_format": "COMPLETE"}


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_escaped(v) for v in value)
    return value


def _escape_stored_results(context: Any) -> None:
    """HTML-escape the record values in stored results before Data Docs render them.

    GE's renderer puts unexpected values into its HTML as they are: a label such as
    `<img src=x onerror=...>` would run in the reader's browser. The verdict and
    anomdet's own messages are computed from the results before this.
    """
    store = context.validation_results_store
    for key in store.list_keys():
        stored = store.get(key)
        for result in stored.results:
            result.result = _escaped(result.result or {})
        store.set(key, stored)


def _build_data_docs(context: Any, directory: Path) -> str | None:
    _escape_stored_results(context)
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    context.add_data_docs_site(site_name=DOCS_SITE_NAME, site_config={
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                          "base_directory": str(directory)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    context.build_data_docs(site_names=[DOCS_SITE_NAME])
    index = directory / "index.html"
    return str(index) if index.is_file() else None


def _run_suite(data: pd.DataFrame, suite: gx.ExpectationSuite,
               docs_dir: Path | None) -> tuple[list[Any], str | None]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # One ephemeral context per call: nothing is written unless Data Docs are asked for,
    # and no state leaks between validations.
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False,
                                                         metric_calculations=False)
    batch_definition = (context.data_sources.add_pandas("anomdet")
                        .add_dataframe_asset("labelled_records")
                        .add_batch_definition_whole_dataframe("all_records"))
    definition = context.validation_definitions.add(gx.ValidationDefinition(
        name="labelled_records_gate", data=batch_definition, suite=context.suites.add(suite)))
    result = definition.run(batch_parameters={"dataframe": data},
                            result_format=_result_format("id" in data.columns))
    index = None
    if docs_dir is not None:
        try:
            index = _build_data_docs(context, docs_dir)
        except OSError as exc:
            # The docs are a by-product for people; the verdict above stands without them.
            logger.warning("could not build Data Docs in %s: %s", docs_dir, exc)
    return list(result.results), index


def _exception_message(validation_result: Any) -> str | None:
    # GE reports a failed metric either flat or keyed by metric id.
    info = validation_result.exception_info or {}
    entries = [info] if "raised_exception" in info else list(info.values())
    for entry in entries:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            return str(entry.get("exception_message") or "unknown error")
    return None


def _expected(kwargs: dict[str, Any]) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if kwargs.get("value_set") is not None:
        return f"expected one of {list(kwargs['value_set'])}"
    if low is not None and high is not None:
        return f"expected between {low:g} and {high:g}"
    if low is not None:
        return f"expected at least {low:g}"
    if high is not None:
        return f"expected at most {high:g}"
    return ""


def _class_counts(value: Any, kwargs: dict[str, Any], meta: dict[str, Any]) -> str:
    rows = int(meta[LABELLED_ROWS_META])
    anomalous = int(value or 0)
    return (f"{anomalous} anomalous and {rows - anomalous} normal of {rows} valid labels "
            f"(expected at least {kwargs['min_value']:g} of each)")


def _distinct_examples(values: list[Any]) -> str:
    shown: list[str] = []
    for value in values:
        text = _short(value)
        if text not in shown:
            shown.append(text)
        if len(shown) == _VALUES_SHOWN:
            break
    return ", ".join(shown)


def _observed(config: Any, result: dict[str, Any], success: bool) -> str:
    kwargs, meta = config.kwargs, config.meta or {}
    if config.type == "expect_column_to_exist":
        return "present" if success else "missing"
    if LABELLED_ROWS_META in meta:
        return _class_counts(result.get("observed_value"), kwargs, meta)
    if "unexpected_count" in result:
        text = f"{result['unexpected_count']} of {result.get('element_count')} records unexpected"
        if not success and result.get("partial_unexpected_list"):
            text += ", e.g. " + _distinct_examples(result["partial_unexpected_list"])
    else:
        value = plain(result.get("observed_value"))
        text = ("no values" if value is None
                else f"{value:.4g}" if isinstance(value, float) else str(value))
    expected = _expected(kwargs)
    return f"{text} ({expected})" if expected else text


def _example_ids(result: dict[str, Any]) -> tuple:
    ids: list[Any] = []
    for entry in result.get("unexpected_index_list") or []:
        if isinstance(entry, dict):
            value = plain(entry.get("id"))
        else:  # a row position: the frame has no id column
            value = f"row {entry}"
        if value not in ids:
            ids.append(value)
        if len(ids) == MAX_EXAMPLE_IDS:
            break
    return tuple(ids)


def _outcome(validation_result: Any, columns: set[str]) -> ExpectationOutcome:
    config = validation_result.expectation_config
    column = config.kwargs.get("column")
    result = dict(validation_result.result or {})
    success = bool(validation_result.success)
    error = _exception_message(validation_result)
    if error and column is not None and column not in columns:
        observed = f"not evaluated: column {column!r} is missing"
    elif error:
        observed = f"not evaluated: {error}"
    else:
        observed = _observed(config, result, success)
    count = result.get("unexpected_count")
    return ExpectationOutcome(
        expectation=config.type, column=column, success=success,
        observed=observed, unexpected_count=None if count is None else int(count),
        example_ids=_example_ids(result),
    )


def validate_labelled(
    frame: pd.DataFrame, config: ValidationConfig, *,
    data_docs_dir: Path | None = None,
) -> ValidationReport:
    """Validate labelled records (columns id, text, label) with Great Expectations.

    Bad data never raises: every problem becomes a failed outcome naming the offending
    ids. With `data_docs_dir`, GE's Data Docs site is built there as well.
    """
    data = _prepare_frame(frame)
    with _quiet_great_expectations():
        suite = build_suite(config, rows=int(data[LABEL_VALUE].notna().sum()))
        results, index = _run_suite(data, suite, data_docs_dir)
    columns = set(data.columns)
    outcomes = tuple(sorted((_outcome(r, columns) for r in results),
                            key=ExpectationOutcome.sort_key))
    report = ValidationReport(success=all(o.success for o in outcomes), rows=len(frame),
                              outcomes=outcomes, data_docs_index=index)
    logger.info("validation %s on %d records: %d of %d expectations failed",
                "passed" if report.success else "FAILED", report.rows,
                len(report.failures()), len(outcomes))
    return report
