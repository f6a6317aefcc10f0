"""What a user runs without a model starts without one: `--help`, `status`, `flagged`,
`models` and `rollback` import neither torch, transformers nor scikit-learn. Each command
runs in a fresh interpreter, so nothing imported by other tests can hide an import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "sklearn")
COMMANDS = (("--help",), ("status",), ("flagged",), ("models",), ("rollback", "--help"),
            ("rollback", "1", "--reason", "no such version"))

# Runs one command in-process, then prints its exit code and which heavy packages are loaded.
_PROBE = f"""
import json, sys
from cli.app import app
try:
    app(sys.argv[1:], prog_name="anomdet")
    code = 0
except SystemExit as exc:
    code = exc.code or 0
print(json.dumps({{"code": code, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def _run(args: tuple[str, ...], folder: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMDET_")}
    env |= {"ANOMDET_DATABASE_URL": f"sqlite:///{folder / 'anomdet.db'}",
            "ANOMDET_ARTIFACTS_DIR": str(folder / "artifacts"), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True,
                          text=True, env=env, cwd=folder, timeout=300, check=False)
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], dict]:
    from db.engine import get_engine, migrate

    folder = tmp_path_factory.mktemp("cli-imports")
    # The tables a first run makes: `status` and the like read them, never create them.
    migrate(get_engine(f"sqlite:///{folder / 'anomdet.db'}"))
    get_engine(f"sqlite:///{folder / 'anomdet.db'}").dispose()
    return {args: _run(args, folder) for args in COMMANDS}


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_commands_without_a_model_import_neither_torch_nor_transformers(
        args: tuple[str, ...], outcomes: dict) -> None:
    outcome = outcomes[args]
    assert not {"torch", "transformers"} & set(outcome["loaded"])
    # The command really ran: the rollback of a version that does not exist fails.
    assert outcome["code"] == (1 if args[0] == "rollback" and "--help" not in args else 0)


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_commands_without_a_model_import_no_scikit_learn(
        args: tuple[str, ...], outcomes: dict) -> None:
    assert "sklearn" not in outcomes[args]["loaded"]


def test_the_probe_sees_a_command_that_loads_a_model_library(tmp_path: Path) -> None:
    # `bench` is defined in the bench package, imported when it is called: its own help
    # loads it, and with it torch and transformers.
    outcome = _run(("bench", "--help"), tmp_path)
    assert outcome["code"] == 0
    assert {"torch", "transformers"} <= set(outcome["loaded"])
