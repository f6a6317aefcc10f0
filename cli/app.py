"""The `anomdet` command line: run the flows, inspect models, runs and flags."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from flows.schedules import CHECK_CRON, RETRAIN_CRON, SCORE_CRON, TIMEZONE

if TYPE_CHECKING:
    import sqlalchemy as sa

    from anomdet.outcome import RetrainOutcome
    from db.records import RecordsMapping

# What a command needs is imported inside it: torch, transformers and scikit-learn take
# seconds to import, and `--help`, `status`, `flagged`, `models` and `rollback` need none
# of them. tests/anomdet/test_cli_imports.py holds the line.

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
            if _debug():
                raise
            _fail(_usage(exc), code=2)
        except Exception as exc:
            if _debug():
                raise
            _fail(_explain(exc))


app = typer.Typer(help="Keep a BERT text anomaly detector fresh over a SQL table.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  cls=_OneLineErrors)
out = Console()
err = Console(stderr=True)
_DEBUG = {"on": False}


@app.callback()
def _options(debug: bool = typer.Option(
        False, "--debug", help="show tracebacks and Prefect's failure logs (or ANOMDET_DEBUG=1)"),
) -> None:
    """Keep a BERT text anomaly detector fresh over a SQL table."""
    _DEBUG["on"] = debug


def _debug() -> bool:
    from anomdet.settings import debug_requested

    return _DEBUG["on"] or debug_requested()


def _explain(exc: BaseException) -> str:
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


class _NoFailureTracebacks(logging.Filter):
    """Drops the records of a failure (a failed task or flow, its traceback) on the
    terminal: the command says what failed in its one error line. The Prefect API
    keeps them, so the UI still shows the whole story."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(("prefect", "anomdet", "db", "tasks")):
            return True
        failed = str(record.msg).startswith(("Finished in state Failed", "Encountered exception"))
        return record.levelno < logging.ERROR and not record.exc_info and not failed


class _NoRoutineTaskEnds(logging.Filter):
    """Drops each task's "Finished in state Completed()" on the terminal, where two dozen
    of them would bury anomdet's own lines; the UI keeps them beside each task."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "prefect.task_runs"
                    and str(record.msg).startswith("Finished in state Completed"))


@contextmanager
def _flow_terminal() -> Iterator[None]:
    """While a flow runs from the CLI, Prefect's terminal logs go where the command's own
    output goes, and failure tracebacks stay off it unless --debug asks for them."""
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    filters: list[logging.Filter] = [_NoRoutineTaskEnds()]
    if not _debug():
        filters.append(_NoFailureTracebacks())
    # Set directly: setStream() would flush the old stream, which may be closed.
    streams = [(h, h.stream, h.console.file) for h in handlers]
    for handler in handlers:
        handler.stream = handler.console.file = sys.stderr
        for one in filters:
            handler.addFilter(one)
    try:
        yield
    finally:
        for handler, stream, file in streams:
            handler.stream, handler.console.file = stream, file
            for one in filters:
                handler.removeFilter(one)


# Prefect's temporary local API needs time to start on a small machine, and
# nothing here may phone home.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # anomdet's own loggers reach each run's logs in the UI (flows.logs sets their level).
    "PREFECT_LOGGING_EXTRA_LOGGERS": "anomdet,db,tasks,flows",
}


def _environment() -> None:
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)


# Runs in a process of its own, in a session of its own (Ctrl-C at the terminal does not
# reach it): it waits until the command's process ends, however it ends (SIGKILL
# included), and stops the temporary Prefect server unless the command said it stops
# the server itself. The server's command line is checked first, so that a process
# that took over the number after the server ended is left alone.
_WATCHDOG = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
pid = int(sys.argv[1])
if sys.stdin.buffer.read() == b"stopped by its command":
    sys.exit(0)
def serving():
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"uvicorn" in cmdline.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True
for sig in (signal.SIGTERM, signal.SIGKILL):
    if not serving():
        break
    os.kill(pid, sig)
    for _ in range(50):
        time.sleep(0.1)
        if not serving():
            break
"""


def _own_prefect_server() -> None:
    """Start Prefect's temporary server now, if the flows will use one (no PREFECT_API_URL),
    and a watchdog that stops it when this process ends: Prefect stops it at a normal
    exit, but a killed process would leave it serving, reparented to PID 1."""
    import atexit
    import subprocess

    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    server = SubprocessASGIServer()
    server.start()  # the instance Prefect's clients use: they find it started
    if server.server_process is None:
        return
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(server.server_process.pid)],
        stdin=subprocess.PIPE, start_new_session=True)

    def stand_down() -> None:
        # Registered after Prefect's own stop, so run before it (atexit runs last in first).
        try:
            watchdog.stdin.write(b"stopped by its command")
            watchdog.stdin.close()
        except OSError:
            pass

    atexit.register(stand_down)


def _model_environment() -> None:
    """For the commands that load a model: transformers offline and quiet as well."""
    _environment()
    from anomdet.model import quiet_transformers

    quiet_transformers()


def _settings() -> Any:
    from anomdet.settings import InvalidConfiguration, load_settings

    try:
        return load_settings()
    except InvalidConfiguration as exc:
        _fail(str(exc))


def _fail(message: str, code: int = 1) -> None:
    # Escaped: messages name columns in brackets ("[text]"), which rich would take as markup.
    err.print(f"[bold red]error:[/] {_markup_free(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _when(value: datetime | None) -> str:
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


def _markup_free(value: Any) -> str:
    """`value` for a rich string with markup: visible escapes, brackets taken literally;
    line breaks kept."""
    return escape(_visible(value, lines=True))


def _cell(value: Any, limit: int | None = None) -> Text:
    """A table cell that shows the value as it is: record text is data, never markup,
    and never terminal control (see `_visible`)."""
    text = "" if value is None else str(value)
    return Text(_visible(text[:limit] if limit else text))


def _print_outcome(outcome: RetrainOutcome) -> None:
    from anomdet.report import metrics_table

    table = Table(title=f"run {outcome.run_id}: challenger, champion and TF-IDF baseline "
                        "on the same test split")
    for col in ("metric", "challenger", "champion", "difference", "baseline", "vs baseline"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in metrics_table(outcome.challenger, outcome.champion, outcome.baseline):
        table.add_row(*map(_cell, row.values()))
    out.print(table)
    for name, passed, detail in outcome.checks:
        out.print(f"  {'[green]pass[/]' if passed else '[red]FAIL[/]'} {_markup_free(name)}: "
                  f"{_markup_free(detail)}", highlight=False)
    out.print(f"decision: [bold]{outcome.decision}[/] - {_markup_free(outcome.reason)}",
              highlight=False)
    if outcome.promoted:
        from anomdet.report import flagged_sql

        out.print(f"version {outcome.promoted_version} is now champion; "
                  f"{outcome.flags_written} records flagged.")
        out.print(f"query the flags with: {flagged_sql(_settings().model_name)}", markup=False,
                  highlight=False)
    elif outcome.champion_version is not None:
        out.print(f"version {outcome.champion_version} stays champion; its flags are "
                  "unchanged.")
    else:
        out.print("there is still no champion, so nothing is flagged.")


def _run_retrain(base_model: str | None, epochs: int | None, seed: int | None,
                 max_train_rows: int | None, learning_rate: float | None = None) -> None:
    from prefect import tags

    from anomdet.errors import DataValidationError
    from flows.retrain import retrain

    _check_before_training(_settings(), base_model)
    _own_prefect_server()
    try:
        with _flow_terminal(), tags("anomdet", "retrain"):  # as the deployments' runs
            outcome = retrain(base_model=base_model, epochs=epochs, seed=seed,
                              max_train_rows=max_train_rows, learning_rate=learning_rate)
    except KeyboardInterrupt:
        from flows.retrain import CANCELLED

        # 128 + SIGINT, as a shell reports a command that Ctrl-C stopped.
        _fail(f"interrupted: the run is recorded in anomdet_runs as failed, {CANCELLED}; "
              "`anomdet status` shows it", code=130)
    except DataValidationError as exc:
        _fail(str(exc))
    except Exception as exc:  # the flow run is marked Failed; say why and exit non-zero
        if _debug():
            raise
        _fail(_explain(exc))
    _print_outcome(outcome)


def _check_before_training(settings: Any, base_model: str | None = None) -> None:
    """What can fail after an hour of training is checked first: the database, the
    records mapping and its columns, that the artifacts folder takes a file, and that it
    has room for what the run writes there."""
    from anomdet.artifact import check_writable
    from db.engine import migrate
    from db.records import reflect_records_table

    if settings.promotion.require_approval:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            _fail("ANOMDET_PROMOTION__REQUIRE_APPROVAL=true: a promotion waits for an answer "
                  "in the Prefect UI, but PREFECT_API_URL is not set, so this run would pause "
                  "on a temporary API that nobody can reach; start `prefect server start` and "
                  "export PREFECT_API_URL=http://127.0.0.1:4200/api, or unset the variable")
    engine = settings.engine()
    migrate(engine)
    reflect_records_table(engine, settings.records.mapping())
    check_writable(settings.artifact_root())
    _check_room(settings, base_model or settings.training.base_model)


def _check_room(settings: Any, base_model: str) -> None:
    """Refuse a run whose files would not fit in the artifacts folder, where their size is
    known before training: the base model is the bundled one or a local folder."""
    from anomdet.artifact import check_free_space, model_bytes
    from anomdet.model import BUNDLED, bundled_model_dir

    source = bundled_model_dir() if base_model == BUNDLED else Path(base_model).expanduser()
    size = model_bytes(source)
    if size is None:  # 'tiny-random' or a hub id: known once loaded, checked when saved
        return
    # The challenger kept for a retry and the new version's artifact: a copy each.
    check_free_space(settings.artifact_root(), 2 * size,
                     f"a run fine-tuning {base_model} (a kept challenger and a model artifact)")


def _records_table(engine: sa.Engine, mapping: RecordsMapping) -> sa.Table:
    """The records table, created in the default shape if missing; a mapped column that the
    existing table lacks ends the command with the reason instead of a traceback."""
    from db.records import ensure_records_table

    try:
        return ensure_records_table(engine, mapping)
    except ValueError as exc:
        _fail(str(exc))


BASE_MODEL_HELP = "'bundled' (all-MiniLM-L6-v2, offline), 'tiny-random', a directory or a hub id"


@app.command()
def retrain(
    base_model: str = typer.Option(None, help=BASE_MODEL_HELP),
    epochs: int = typer.Option(None, min=1, help="training epochs (default from settings)"),
    seed: int = typer.Option(
        None, help="seed for initialisation and batching (the split keeps training.split_seed)"),
    max_train_rows: int = typer.Option(None, min=10, help="cap on training rows"),
    learning_rate: float = typer.Option(None, min=0, help="peak learning rate"),
    task_runner: str = typer.Option(
        None, help="where a promotion's backfill runs: 'default' (threads) or 'dask' "
                   "(default: ANOMDET_SCORING__BACKFILL_TASK_RUNNER)"),
    dask_workers: int = typer.Option(
        None, min=1, help="local Dask workers of the backfill (with --task-runner dask)"),
) -> None:
    """Run the retraining flow once: exit 0 when it completes, promoted or not."""
    # The flow reads its settings itself: the options reach it as the settings they set.
    for name, value in (("BACKFILL_TASK_RUNNER", task_runner), ("DASK_WORKERS", dask_workers)):
        if value is not None:
            os.environ[f"ANOMDET_SCORING__{name}"] = str(value)
    _settings()  # every setting is checked before a model library loads
    _model_environment()
    _run_retrain(base_model, epochs, seed, max_train_rows, learning_rate)


@app.command()
def demo(
    rows: int = typer.Option(3000, min=100, help="demo records to seed into an empty table"),
    anomaly_rate: float = typer.Option(0.1, min=0.01, max=0.45, help="share of anomalies"),
    labelled: float = typer.Option(0.8, min=0.1, max=1.0, help="share of records labelled"),
    base_model: str = typer.Option(None, help=BASE_MODEL_HELP),
    epochs: int = typer.Option(None, min=1, help="training epochs (default from settings)"),
    learning_rate: float = typer.Option(None, min=0,
                                        help="peak learning rate (default from settings)"),
) -> None:
    """Seed demo records if the records table is empty, then run the retraining flow.

    Each demo run trains with another seed, as a nightly run on fresh data would
    produce another model, so the second run has a real challenger to judge.
    """
    settings = _settings()  # every setting is checked before a model library loads
    _model_environment()
    from anomdet.demo import generate_demo_records
    from db.service import count_runs, seed_if_empty

    engine = settings.engine()
    mapping = settings.records.mapping()
    frame = seed_if_empty(engine, _records_table(engine, mapping), mapping,
                          lambda: generate_demo_records(rows, anomaly_rate=anomaly_rate,
                                                        labelled_fraction=labelled))
    if frame is not None:
        out.print(f"seeded {len(frame)} demo records into {mapping.table!r} "
                  f"({int(frame['label'].notna().sum())} labelled)")
    out.print(f"database: {settings.safe_database_url()}")
    previous_runs = count_runs(engine, settings.model_name)
    _run_retrain(base_model, epochs, settings.training.seed + previous_runs, None,
                 learning_rate)


@app.command("import-csv")
def import_csv(file: Path = typer.Argument(..., help="CSV with columns id,text and optional label")
               ) -> None:
    """Insert or update records from a CSV file, all or nothing."""
    _environment()
    settings = _settings()
    from anomdet.csv_import import read_records_csv
    from db.engine import migrate
    from db.records import target_id_column
    from db.service import write_records

    engine = settings.engine()
    mapping = settings.records.mapping()
    try:
        # Ids are checked against the type of the column they go into, before any write.
        frame = read_records_csv(file, target_id_column(engine, mapping))
    except ValueError as exc:
        _fail(str(exc))
    # After the file is accepted, so that a refused one leaves the database as it was.
    migrate(engine)
    written = write_records(engine, _records_table(engine, mapping), mapping, frame)
    out.print(f"imported {written} records into {mapping.table!r}")


@app.command()
def score(
    task_runner: str = typer.Option("default", help="'default' (threads) or 'dask'"),
    chunks: int = typer.Option(4, min=1, help="id ranges mapped over scoring tasks"),
    dask_workers: int = typer.Option(2, min=1, help="local Dask workers (with --task-runner dask)"),
) -> None:
    """Score unlabelled records that the champion has not scored yet."""
    _settings()  # a bad setting is reported before a model library loads or a flow starts
    _model_environment()
    from prefect import tags

    from flows.score import score as score_flow
    from flows.score import with_task_runner

    _own_prefect_server()
    try:
        with _flow_terminal(), tags("anomdet", "score"):
            summary = with_task_runner(score_flow, task_runner, dask_workers)(chunks=chunks)
    except Exception as exc:
        if _debug():
            raise
        _fail(_explain(exc))
    # Data, not markup: ids and texts may hold brackets.
    out.print(json.dumps(summary, indent=2, default=str), markup=False, highlight=False)


def _database(*, writes: bool = False) -> tuple[Any, sa.Engine]:
    """Settings and the engine of a command that reads (`status`, `models`, `flagged`,
    `queue`), or with `writes` changes (`rollback`), anomdet's tables. Neither creates the
    database or its tables: a database without them ends the command with what to do.
    Tables of an older schema are migrated for a command that writes, refused by one
    that reads."""
    from db.engine import migrate

    settings = _settings()
    engine = settings.engine()
    problem = _schema_problem(engine, settings, writes=writes)
    if problem == "older":
        migrate(engine)
    elif problem:
        _fail(problem)
    return settings, engine


def _schema_problem(engine: sa.Engine, settings: Any, *, writes: bool) -> str | None:
    """Why anomdet's tables cannot be used in this database ("older": a migration would
    make them usable), or None when they can."""
    from db.engine import NoDatabaseFile, describe_database, head_revision, schema_revision

    only = ("this command changes only anomdet's own tables" if writes
            else "this command only reads")
    start = ("point ANOMDET_DATABASE_URL at anomdet's database, or start one there with "
             "`anomdet import-csv` or `anomdet demo`")
    try:
        revision = schema_revision(engine)
    except NoDatabaseFile as missing:
        if not missing.path.parent.is_dir():
            return (f"cannot open SQLite database {missing.path}: the folder "
                    f"{missing.path.parent} does not exist; create it or fix "
                    "ANOMDET_DATABASE_URL")
        return f"SQLite database {missing.path} does not exist, and {only}; {start}"
    where = describe_database(settings.database_url)
    if revision is None:
        return f"{where} holds no anomdet tables, and {only}; {start}"
    head = head_revision()
    if revision == head:
        return None
    if writes:
        return "older"
    return (f"{where} holds anomdet tables of schema revision {revision}, not this "
            f"anomdet's {head}, and {only}; `anomdet retrain` or `anomdet score` migrates "
            "them (or `alembic upgrade head`)")


@app.command()
def status(runs: int = typer.Option(5, min=1, help="how many recent runs to show")) -> None:
    """The champion and the latest runs with their decisions."""
    _environment()
    from db.service import champion_and_runs

    settings, engine = _database()
    champion, recent = champion_and_runs(engine, settings.model_name, runs)
    if champion:
        f1 = champion.metrics.get("f1")
        out.print(f"champion: {settings.model_name} version {champion.version} "
                  f"(f1 {f1:.4f}, threshold {champion.threshold:.4f}, "
                  f"promoted {_when(champion.promoted_at)})", highlight=False)
    else:
        out.print(f"champion: none yet for {settings.model_name!r}")
    table = Table(title="recent runs")
    for col in ("run", "started", "state", "decision", "reason"):
        table.add_column(col)
    for run in recent:
        gone = _process_gone(run)
        table.add_row(str(run.id), _when(run.started_at),
                      _cell(f"{run.state} (process gone)" if gone else run.state),
                      _cell(run.decision or "-"), _cell(gone or run.reason, 120))
    out.print(table)


def _process_gone(run: Any) -> str | None:
    """What to say of a `running` run whose process has ended without recording how (it
    was killed), or None. Only a process of this host can be looked for."""
    import socket

    process = (run.details or {}).get("process") or {}
    pid, host = process.get("pid"), process.get("host")
    if run.state != "running" or not pid or host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return (f"its process {pid} on {host} ended without recording an outcome (killed?); "
                "the next retrain closes it as failed")
    except PermissionError:  # alive, another user's
        return None
    return None


@app.command()
def flagged(limit: int = typer.Option(20, min=1, help="rows to show")) -> None:
    """The champion's flagged records with their text (the anomdet_flagged view)."""
    _environment()
    from db.service import FLAGGED_QUERY, FlaggedViewMissing, champion_flags

    settings, engine = _database()
    try:
        champion, rows = champion_flags(engine, settings.model_name,
                                        settings.records.mapping(), limit)
    except FlaggedViewMissing as missing:
        _fail(f"anomdet_flagged cannot be read: {missing.reason}" if missing.reason else
              "anomdet_flagged does not exist yet; run `anomdet retrain` first")
    if champion is None:
        out.print(f"no champion of {settings.model_name!r} yet: nothing is flagged until "
                  "`anomdet retrain` promotes one", soft_wrap=True, highlight=False)
        return
    table = Table(title=FLAGGED_QUERY)
    for col in ("record_id", "score", "version", "text"):
        table.add_column(col)
    for row in rows:
        table.add_row(_cell(row["record_id"]), f"{row['score']:.4f}",
                      str(row["model_version"]), _cell(row["text"], 100))
    out.print(table)


@app.command()
def models() -> None:
    """Every model version with its status, test metrics, production precision of its
    reviewed flags, and promotion/retirement times."""
    _environment()
    from db.service import QUALITY_QUERY, versions_and_quality

    settings, engine = _database()
    versions, quality = versions_and_quality(engine, settings.model_name,
                                             settings.records.mapping())
    table = Table(title=f"versions of {settings.model_name}")
    for col in ("version", "status", "f1", "pr_auc", "threshold", "flags", "reviewed",
                "precision (95% CI)", "base model", "created", "promoted", "retired"):
        table.add_column(col)
    for v in versions:
        row = quality.get(v.version)
        table.add_row(str(v.version), v.status, f"{v.metrics.get('f1', float('nan')):.4f}",
                      f"{v.metrics.get('pr_auc', float('nan')):.4f}", f"{v.threshold:.4f}",
                      str(row["flags"]) if row else "-", _reviewed(row), _precision(row),
                      _cell(v.base_model), _when(v.created_at), _when(v.promoted_at),
                      _when(v.retired_at))
    out.print(table if versions else f"no versions of {settings.model_name!r} yet")
    if quality:
        out.print("precision: of the flags reviewers labelled since (label 1 confirms a flag, "
                  f"0 dismisses it); {QUALITY_QUERY}", highlight=False,
                  markup=False, soft_wrap=True)


def _reviewed(row: dict[str, Any] | None) -> str:
    if not row or not row["flags"]:
        return "-"
    return f"{row['reviewed']} ({row['reviewed_share']:.0%})"


def _precision(row: dict[str, Any] | None) -> str:
    if not row or row["precision"] is None:
        return "-"
    return (f"{row['precision']:.3f} [{row['precision_low']:.3f}, "
            f"{row['precision_high']:.3f}]")


@app.command()
def queue(limit: int = typer.Option(20, min=1, help="rows to show")) -> None:
    """The unlabelled records to label next (the anomdet_label_queue view): those the
    champion is least sure of, and a sample of its high scores across distinct texts."""
    _environment()
    from db.service import QUEUE_QUERY, champion_label_queue, verdict_sql

    settings, engine = _database()
    mapping = settings.records.mapping()
    try:
        rows = champion_label_queue(engine, settings.model_name, mapping,
                                    settings.review.queue_sample_every, limit)
    except ValueError as exc:
        _fail(str(exc))
    if rows is None:
        out.print(f"no champion of {settings.model_name!r} yet: the queue is made of its "
                  "scores, so it fills once `anomdet retrain` promotes one",
                  soft_wrap=True, highlight=False)
        return
    table = Table(title=QUEUE_QUERY)
    for col in ("rank", "record_id", "score", "threshold", "version", "reason", "copies",
                "text"):
        table.add_column(col)
    for row in rows:
        table.add_row(str(row["rank"]), _cell(row["record_id"]), f"{row['score']:.4f}",
                      f"{row['threshold']:.4f}", str(row["model_version"]),
                      _cell(row["reason"]), str(row["copies"]), _cell(row["text"], 80))
    out.print(table if rows else "the queue is empty: no unlabelled record holds a score of "
              "the champion (`anomdet score` scores new records)")
    out.print(f"record a verdict: {verdict_sql(mapping)}", markup=False, highlight=False,
              soft_wrap=True)


@app.command()
def rollback(
    version: int = typer.Argument(..., help="the version to make champion again"),
    reason: str = typer.Option(..., help="why, in words; recorded in anomdet_runs"),
) -> None:
    """Make an earlier version champion again; anomdet_flagged follows it."""
    _environment()
    from anomdet.artifact import verify_artifact
    from db.repository import ChampionChanged
    from db.service import roll_back

    settings, engine = _database(writes=True)
    try:
        # The artifact is checked inside the transaction: a version whose files are
        # gone or altered never becomes champion.
        done = roll_back(engine, settings.model_name, version, reason,
                         verify=lambda v: verify_artifact(Path(v.artifact_uri), v.weights_sha256))
    except (ValueError, ChampionChanged) as exc:
        _fail(str(exc))
    _emit_rolled_back(settings.model_name, done.version, done.previous_version, reason,
                      done.run_id)
    out.print(f"version {done.version} is champion again (recorded as run {done.run_id}). "
              "Run `anomdet score` to flag records it has not scored yet.")


def _emit_rolled_back(model_name: str, version: int, previous: int | None, reason: str,
                      run_id: int) -> None:
    """Tell a Prefect server about the rollback (its triggers may score, notify)."""
    from prefect.settings import PREFECT_API_URL

    # Without a configured server Prefect would start a temporary one for this event
    # alone: tens of seconds for an event no automation can see, so none is sent.
    if not PREFECT_API_URL.value():
        return
    from prefect.events.worker import EventsWorker

    from tasks.events import emit_rolled_back

    emit_rolled_back(model_name, version, previous_version=previous, reason=reason,
                     run_id=run_id)
    # Sent before the command returns, not at interpreter exit.
    EventsWorker.instance().drain()


@app.command()
def serve(
    retrain_cron: str = typer.Option(RETRAIN_CRON, help="when to retrain (cron, in --timezone)"),
    score_cron: str = typer.Option(SCORE_CRON, help="when to score new records (cron)"),
    timezone: str = typer.Option(TIMEZONE, help="time zone of the schedules"),
    check_cron: str = typer.Option(
        CHECK_CRON, help="when to check for new labels and drift, which start a retrain (cron)"),
) -> None:
    """Serve the retraining, scoring and label-checking deployments from this process (no
    worker needed)."""
    _settings()  # a bad setting is reported now, not at the first scheduled run
    _model_environment()
    from flows.serve import serve_all

    _own_prefect_server()
    try:
        serve_all(retrain_cron=retrain_cron, score_cron=score_cron, timezone=timezone,
                  check_cron=check_cron)
    except ValueError as exc:
        _fail(str(exc))


def main() -> None:
    """Entry point of `python -m cli`, under the console script's name."""
    app(prog_name="anomdet")


if __name__ == "__main__":
    sys.exit(main())
