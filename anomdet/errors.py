"""Exceptions that carry what a person needs to see."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

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


# Words of driver messages that say the connection itself failed: worth a retry, since a
# server restarting or a network blip passes. Everything else (a missing database, bad
# data, a read-only file) stays the same however often it is tried.
_TRANSIENT = ("connection refused", "timeout expired", "timed out", "server closed the connection",
              "connection reset", "terminating connection", "could not receive data",
              "could not send data", "connection is closed", "database is locked",
              "the database system is starting up", "the database system is shutting down")
_NOT_TRANSIENT = ("does not exist", "authentication failed", "readonly", "read-only",
                  "not a database", "unable to open database file")


def is_transient(exc: BaseException) -> bool:
    """True for connection-kind database failures that may pass when tried again."""
    import sqlalchemy.exc as sa_exc

    if not isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return False
    text = str(getattr(exc, "orig", exc)).lower()
    return any(w in text for w in _TRANSIENT) and not any(w in text for w in _NOT_TRANSIENT)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _sqlite_message(reason: str, url: Any) -> str:
    # A URI filename (sqlite:///file:path?mode=ro&uri=true) names the same file.
    path = Path((url.database or "").removeprefix("file:"))
    if "not a database" in reason:
        return (f"{path} is not a SQLite database (sqlite: {reason}); point ANOMDET_DATABASE_URL "
                "at an anomdet SQLite file, or at a new file name to start afresh")
    if "unable to open database file" in reason and not path.parent.is_dir():
        return (f"cannot open SQLite database {path}: the folder {path.parent} does not exist; "
                "create it or fix ANOMDET_DATABASE_URL")
    if "readonly" in reason or "read-only" in reason:
        return (f"SQLite database {path} is read-only (sqlite: {reason}); make the file and "
                "its folder writable, or point ANOMDET_DATABASE_URL at a writable copy")
    if "locked" in reason:
        return (f"SQLite database {path} is locked by another process (sqlite: {reason}); "
                "wait for it to finish and run the command again")
    return (f"SQLite database {path}: {reason}; check the file and ANOMDET_DATABASE_URL")


def _postgres_message(reason: str, url: Any, connect_timeout: float | None) -> str:
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    lower = reason.lower()
    if "connection refused" in lower:
        return (f"cannot connect to PostgreSQL at {where}: connection refused; start the server "
                "or fix the host and port in ANOMDET_DATABASE_URL")
    if "timeout" in lower:
        wait = f"within {connect_timeout:g} s " if connect_timeout else ""
        return (f"PostgreSQL at {where} did not answer {wait}(connection timeout); check that "
                "the host and port in ANOMDET_DATABASE_URL are a running PostgreSQL server, "
                "or raise ANOMDET_CONNECT_TIMEOUT")
    if f'database "{url.database}" does not exist' in reason:
        return (f"PostgreSQL database {url.database!r} does not exist on {where}; create it "
                f"(createdb {url.database}) or fix the database name in ANOMDET_DATABASE_URL")
    if "authentication failed" in lower:
        return (f"PostgreSQL at {where} refused user {url.username!r} (authentication failed); "
                "fix the user or password in ANOMDET_DATABASE_URL")
    if "read-only transaction" in lower:
        return (f"PostgreSQL database {url.database!r} on {where} is read-only ({reason}); "
                "anomdet writes its own tables there: connect as a user or to a server that "
                "can write")
    return f"PostgreSQL database {url.database!r} on {where}: {reason}"


def is_run_timeout(exc: BaseException) -> bool:
    """Whether a run or one of its tasks passed its time limit (Prefect raises these, by
    these names, when a timeout_seconds runs out), as opposed to, say, a socket timeout."""
    return isinstance(exc, TimeoutError) and type(exc).__name__ in {
        "TaskRunTimeoutError", "FlowRunTimeoutError"}


def timed_out(exc: BaseException, *, fine_tune_minutes: float, retrain_minutes: float) -> str:
    """A run past one of its time limits: which limits hold and what to change."""
    return (f"{type(exc).__name__}: {exc} (limits: fine-tuning {fine_tune_minutes:g} min, "
            f"the run {retrain_minutes:g} min; raise ANOMDET_FINE_TUNE_TIMEOUT_MINUTES or "
            "ANOMDET_RETRAIN_TIMEOUT_MINUTES, or train on fewer rows with "
            "ANOMDET_TRAINING__MAX_TRAIN_ROWS)")


def explain(exc: BaseException, *, database_url: str | None = None,
            connect_timeout: float | None = None) -> str:
    """One line for a person: what failed, where (file, host, table) and what to do.

    Database URLs are shown with their password masked; a password that a driver
    echoes in its message is masked too.
    """
    import sqlalchemy.exc as sa_exc
    from sqlalchemy.engine import make_url

    url = make_url(database_url) if database_url else None
    if isinstance(exc, sa_exc.DBAPIError) and url is not None:
        reason = _first_line(str(exc.orig))
        if url.get_backend_name() == "sqlite":
            text = _sqlite_message(reason, url)
        else:
            text = _postgres_message(reason, url, connect_timeout)
    elif isinstance(exc, sa_exc.DBAPIError):
        text = f"database error: {_first_line(str(exc.orig))}"
    elif isinstance(exc, OSError) and exc.filename:
        text = f"{exc.filename}: {exc.strerror or exc}"
    elif isinstance(exc, ValueError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {_first_line(str(exc))}"
    if url is not None and url.password:
        text = text.replace(str(url.password), "***")
    return text
