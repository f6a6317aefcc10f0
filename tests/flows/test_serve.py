"""`anomdet serve` serves the deployments of prefect.yaml under names of its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.serve import RETRAIN_SERVED, served_deployments

ROOT = Path(__file__).resolve().parents[2]


def test_each_served_deployment_mirrors_its_deployment_in_prefect_yaml() -> None:
    declared = {d["entrypoint"].rsplit(":", 1)[1]: d for d in
                yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    served = served_deployments()
    assert [d.name for d in served] == ["retrain-served", "score-served", "check-served"]
    for deployment in served:
        twin = declared[deployment.flow_name]
        assert deployment.name != twin["name"]
        assert deployment.description == twin["description"]
        assert deployment.tags == [*twin["tags"], "served"]
        [schedule] = deployment.schedules
        assert {"cron": schedule.schedule.cron,
                "timezone": schedule.schedule.timezone} == twin["schedules"][0]
        limit = deployment.concurrency_limit, deployment.concurrency_options.collision_strategy
        assert limit == (twin["concurrency_limit"]["limit"],
                         twin["concurrency_limit"]["collision_strategy"])
    # The served check starts the served retrain, not the work pool's.
    assert served[2].parameters == {"retrain_deployment": f"retrain/{RETRAIN_SERVED}"}
    assert declared["check"]["parameters"] == {"retrain_deployment": "retrain/retrain-nightly"}


def test_options_replace_the_schedules() -> None:
    served = served_deployments("1 3 * * *", "5 * * * *", "Europe/Berlin", "*/7 * * * *")
    assert [(d.schedules[0].schedule.cron, d.schedules[0].schedule.timezone) for d in served] \
        == [("1 3 * * *", "Europe/Berlin"), ("5 * * * *", "Europe/Berlin"),
            ("*/7 * * * *", "Europe/Berlin")]


@pytest.mark.parametrize(("options", "said"), [
    ({"score_cron": "every hour"}, "score cron 'every hour' is not a cron expression"),
    ({"timezone": "Mars/Olympus"}, "timezone 'Mars/Olympus' is not an IANA time zone name"),
])
def test_a_bad_option_is_named(options: dict[str, str], said: str) -> None:
    with pytest.raises(ValueError, match=said):
        served_deployments(**options)


def test_prefect_yaml_reads_as_the_served_deployments_need() -> None:
    from flows.schedules import parse_deployments

    one = """
  - name: nightly
    entrypoint: flows/retrain.py:retrain
    schedules: [{cron: "0 2 * * *", timezone: Europe/Paris}]
    concurrency_limit: 1
"""
    [read] = parse_deployments(f"deployments:{one}").values()
    assert (read.name, read.cron, read.timezone, read.concurrency_limit,
            read.collision_strategy, read.parameters) == (
        "nightly", "0 2 * * *", "Europe/Paris", 1, None, {})
    with pytest.raises(ValueError, match="declares flows/retrain.py:retrain twice"):
        parse_deployments(f"deployments:{one}{one.replace('nightly', 'other')}")
    with pytest.raises(ValueError, match="'nightly': give it exactly one cron schedule"):
        parse_deployments("deployments:" + one.replace("schedules: [", "schedules: [{cron: x}, "))
