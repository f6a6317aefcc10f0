"""Every flow imports, and every prefect.yaml entrypoint resolves to a flow."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[1]


def test_every_deployment_entrypoint_resolves_to_a_flow() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = config["deployments"]
    assert {d["name"] for d in deployments} >= {"retrain-nightly", "score-hourly"}
    for deployment in deployments:
        path, name = deployment["entrypoint"].split(":")
        assert (ROOT / path).is_file(), path
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert isinstance(getattr(module, name), Flow), deployment["entrypoint"]
        assert deployment["work_pool"]["name"] == "anomdet-process"
        assert deployment["schedules"], f"{deployment['name']} has no schedule"


def test_domain_package_does_not_import_prefect() -> None:
    for path in (ROOT / "anomdet").glob("*.py"):
        text = path.read_text()
        assert "import prefect" not in text and "from prefect" not in text, path.name


# Queries and statements built or run by hand: SQLAlchemy's select() and text(), a
# session or connection executing one, the legacy Query API, and rows read by class.
_SQL = re.compile(r"\b(?:select|text)\(|\.execute\(|\.query\(|session\.(?:get|scalars?)\(")


def test_sql_lives_in_the_db_package() -> None:
    # Tasks reach the database through one named function of db/ each, and the domain is
    # handed its data: a query anywhere else would escape the connect timeout that
    # Settings.session() and Settings.engine() carry, and the tests of db/.
    found = []
    for folder in ("cli", "anomdet", "tasks", "flows"):
        for path in sorted((ROOT / folder).glob("*.py")):
            found += [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                      for number, line in enumerate(path.read_text().splitlines(), 1)
                      if _SQL.search(line)]
    assert not found, "\n".join(found)


def test_the_domain_is_handed_its_data() -> None:
    # Only Settings opens sessions (Settings.session, Settings.engine); the rest of the
    # domain gets records and stores results through what its callers pass in.
    for path in sorted((ROOT / "anomdet").glob("*.py")):
        if path.name == "settings.py":
            continue
        text = path.read_text()
        for reach in ("from db.repository", "from db import repository", "from db.engine",
                      "session_scope(", ".connect("):
            assert reach not in text, f"{path.name} reaches the database: {reach}"


def test_flows_start_without_loading_a_model_library() -> None:
    # A run that its data stops, or that finds nothing to score, must not first spend
    # seconds loading torch, transformers and scikit-learn: the tasks that train,
    # score or draw import them. A fresh interpreter, so no other test's import hides one.
    import json
    import subprocess
    import sys

    probe = ("import json, sys, flows.retrain, flows.score, flows.check, flows.serve; "
             "print(json.dumps([m for m in ('torch', 'transformers', 'sklearn') "
             "if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
