"""Every place that names a default schedule names the one in flows.schedules."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.main import get_command

from flows.schedules import CHECK_CRON, RETRAIN_CRON, SCORE_CRON, TIMEZONE

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_yaml_deployments_run_on_the_default_schedules() -> None:
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    schedules = {d["name"]: d["schedules"] for d in config["deployments"]}
    assert schedules["retrain-nightly"] == [{"cron": RETRAIN_CRON, "timezone": TIMEZONE}]
    assert schedules["score-hourly"] == [{"cron": SCORE_CRON, "timezone": TIMEZONE}]
    assert schedules["check-labels"] == [{"cron": CHECK_CRON, "timezone": TIMEZONE}]


def test_serve_command_defaults_to_the_same_schedules() -> None:
    from cli.app import app

    serve = get_command(app).get_command(None, "serve")  # type: ignore[attr-defined]
    defaults = {p.name: p.default for p in serve.params}
    assert defaults == {"retrain_cron": RETRAIN_CRON, "score_cron": SCORE_CRON,
                        "timezone": TIMEZONE, "check_cron": CHECK_CRON}
