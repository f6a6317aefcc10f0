"""The Prefect around a command that runs a flow: its environment, its terminal logs, and
the temporary server that a command without PREFECT_API_URL starts."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from cli.common import debug_on


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
def flow_terminal() -> Iterator[None]:
    """While a flow runs from the CLI, Prefect's terminal logs go where the command's own
    output goes, and failure tracebacks stay off it unless --debug asks for them."""
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    filters: list[logging.Filter] = [_NoRoutineTaskEnds()]
    if not debug_on():
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


def prefect_environment() -> None:
    """PREFECT_DEFAULTS, where the environment does not set them already."""
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


def own_prefect_server() -> None:
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


def model_environment() -> None:
    """For the commands that load a model: transformers offline and quiet as well."""
    prefect_environment()
    from anomdet.encoder import quiet_transformers

    quiet_transformers()
