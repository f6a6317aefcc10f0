"""What every command shares: the terminal, one-line failures and the settings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

out = Console()
err = Console(stderr=True)
_DEBUG = {"on": False}


def show_tracebacks(on: bool) -> None:
    """The --debug option: failures raise with their traceback instead of one line."""
    _DEBUG["on"] = on


def debug_on() -> bool:
    """Whether --debug or ANOMDET_DEBUG asked for tracebacks."""
    from anomdet.settings import debug_requested

    return _DEBUG["on"] or debug_requested()


def explain_failure(exc: BaseException) -> str:
    """One line for any failure, naming the database as configured (password masked)."""
    from anomdet.errors import explain

    try:
        from anomdet.settings import Settings

        settings = Settings()
    except Exception:  # settings are reported on their own; say what can be said
        return explain(exc)
    from anomdet.errors import is_run_timeout, timed_out

    if is_run_timeout(exc):
        return timed_out(exc, fine_tune_minutes=settings.fine_tune_timeout_minutes,
                         retrain_minutes=settings.retrain_timeout_minutes)
    # A timestamp the driver could not read: name the table, column and rows.
    from db.checks import explain_unreadable_timestamps

    problem = explain_unreadable_timestamps(exc, settings.engine(), settings.records.mapping())
    if problem:
        return problem
    return explain(exc, database_url=settings.database_url,
                   connect_timeout=settings.connect_timeout)


def read_settings() -> Any:
    """The settings; a bad one ends the command with its one-line reason."""
    from anomdet.settings import InvalidConfiguration, load_settings

    try:
        return load_settings()
    except InvalidConfiguration as exc:
        fail(str(exc))


def fail(message: str, code: int = 1) -> None:
    """End the command with `message` as its one `error:` line, exit status `code`."""
    # Escaped: messages name columns in brackets ("[text]"), which rich would take as markup.
    err.print(f"[bold red]error:[/] {markup_free(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def when(value: datetime | None) -> str:
    """A timestamp for people: minutes precision, or a dash."""
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _escape_code(char: str) -> str:
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if char in named:
        return named[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


# Control characters (C0, DEL, C1) and the bidirectional overrides and isolates. Record
# text comes from anyone who can write a record: printed raw, an ESC sequence recolours,
# hides or relinks (OSC 8) what the operator reads, and a bidi override reorders it. Rich
# strips only bell, backspace and carriage return, not ESC.
_UNSAFE = [*range(0x20), 0x7F, *range(0x80, 0xA0), *range(0x202A, 0x202F),
           *range(0x2066, 0x206A)]
_VISIBLE = str.maketrans({code: _escape_code(chr(code)) for code in _UNSAFE})
# Messages of several lines (a validation report) keep their line breaks.
_VISIBLE_LINES = str.maketrans({code: _escape_code(chr(code)) for code in _UNSAFE
                                if code != ord("\n")})


def _visible(value: Any, *, lines: bool = False) -> str:
    """`value` as text whose control characters show as escapes (ESC as \\x1b); with
    `lines`, line breaks stay line breaks."""
    return str(value).translate(_VISIBLE_LINES if lines else _VISIBLE)


def markup_free(value: Any) -> str:
    """`value` for a rich string with markup: visible escapes, brackets taken literally;
    line breaks kept."""
    return escape(_visible(value, lines=True))


def cell(value: Any, limit: int | None = None) -> Text:
    """A table cell that shows the value as it is: record text is data, never markup,
    and never terminal control (see `_visible`)."""
    text = "" if value is None else str(value)
    return Text(_visible(text[:limit] if limit else text))
