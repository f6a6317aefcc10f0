"""Every flow imports, and every prefect.yaml entrypoint resolves to a flow."""

from __future__ import annotations

import importlib
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
