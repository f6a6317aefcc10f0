"""Benchmarks: anomdet measured against references on the same data, in one process."""

from rich.console import Console

#: Columns a results table may use. A console that is no terminal (output sent to a file
#: or a CI log) is 80 columns wide to rich, which cuts the suite's twelve columns to "0.…".
REPORT_WIDTH = 200


def report_console() -> Console:
    """The console the benchmarks print their tables on: the terminal's width, and at
    least `REPORT_WIDTH` columns where that is narrower or there is no terminal."""
    return Console(width=max(Console().width, REPORT_WIDTH))
