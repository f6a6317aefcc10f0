"""Exceptions that carry what a person needs to see."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anomdet.drift import DriftReport
    from anomdet.validation import ValidationReport


class DataValidationError(ValueError):
    """The data gate closed: nothing may be trained, stored or flagged."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__("data validation failed:\n" + report.describe_failures())


class DriftError(ValueError):
    """Drift crossed a bound configured to fail the gate."""

    def __init__(self, report: DriftReport) -> None:
        self.report = report
        super().__init__("data drift beyond the configured bounds:\n  "
                         + "\n  ".join(report.breaches))
