"""The `anomdet` command line: run the flows, inspect models, runs and flags."""

from __future__ import annotations

import importlib
from typing import Any

import click
import typer
from typer.core import TyperGroup

from cli import review, runs
from cli.common import debug_on, explain_failure, fail, show_tracebacks

# What a command needs is imported inside it (cli.runs, cli.review): torch, transformers
# and scikit-learn take seconds to import, and `--help`, `status`, `flagged`, `models` and
# `rollback` need none of them. tests/anomdet/test_cli_imports.py holds the line.

#: Commands defined outside this module, imported only when they run (or show their own
#: help): name -> ("module:function", the summary that `anomdet --help` lists).
DEFERRED_COMMANDS = {
    "bench": ("bench.model:bench_command",
              "Measure quality against a TF-IDF baseline and speed against stock transformers."),
    "bench-score": ("bench.scoring:bench_score_command",
                    "Measure flag writes, end-to-end scoring overhead and the streaming "
                    "scorer's memory."),
    "bench-scale": ("bench.scale:bench_scale_command",
                    "Measure a promotion's backfill and flip, incremental scoring and the "
                    "view's reads as the records table grows (PostgreSQL)."),
}


class _Deferred(click.Command):
    """Stands in for a command of DEFERRED_COMMANDS until it is called."""

    def __init__(self, name: str, target: str, summary: str) -> None:
        super().__init__(name, help=summary, short_help=summary)
        self.target = target

    def load(self) -> click.Command:
        """The real command, built by Typer from its function."""
        module, function = self.target.split(":")
        holder = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        holder.command(self.name)(getattr(importlib.import_module(module), function))
        return typer.main.get_command(holder)

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        # The group invokes the command of the context returned here: the real one.
        return self.load().make_context(info_name, args, parent=parent, **extra)


# Typer parses with its own copy of click: its usage errors are not click's.
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _usage(exc: Exception) -> str:
    """A usage error in one line, with the way to the command's help."""
    ctx = getattr(exc, "ctx", None)
    # The program's own name varies (`python -m cli`, a test runner): say anomdet.
    names, at = [], ctx
    while at is not None and at.parent is not None:
        names.insert(0, at.info_name)
        at = at.parent
    where = f"`{' '.join(['anomdet', *names])} --help`"
    option = getattr(exc, "option_name", "") or ""
    if option.lstrip("-").isdigit() and ctx is not None and ctx.command.name == "rollback":
        return (f"'anomdet rollback {option}': versions are numbered from 1 and {option} "
                "reads as an option; give the number of a retired version (`anomdet models` "
                "lists them), as in `anomdet rollback 1 --reason ...`")
    return f"{exc.format_message().rstrip('.')}; see {where}"


class _OneLineErrors(TyperGroup):
    """Every command ends a failure with one `error:` line, no traceback (unless --debug)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *DEFERRED_COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in DEFERRED_COMMANDS:
            return _Deferred(cmd_name, *DEFERRED_COMMANDS[cmd_name])
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except _USAGE_ERROR as exc:  # a mistyped command line, found by typer's click
            if debug_on():
                raise
            fail(_usage(exc), code=2)
        except Exception as exc:
            if debug_on():
                raise
            fail(explain_failure(exc))


app = typer.Typer(help="Keep a BERT text anomaly detector fresh over a SQL table.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  cls=_OneLineErrors)


@app.callback()
def _options(debug: bool = typer.Option(
        False, "--debug", help="show tracebacks and Prefect's failure logs (or ANOMDET_DEBUG=1)"),
) -> None:
    """Keep a BERT text anomaly detector fresh over a SQL table."""
    show_tracebacks(debug)


# In the order `anomdet --help` lists them.
app.command()(runs.retrain)
app.command()(runs.demo)
app.command("import-csv")(runs.import_csv)
app.command()(runs.score)
app.command()(review.status)
app.command()(review.flagged)
app.command()(review.models)
app.command()(review.queue)
app.command()(review.rollback)
app.command()(runs.serve)


def main() -> None:
    """Entry point of `python -m cli`, under the console script's name."""
    app(prog_name="anomdet")

