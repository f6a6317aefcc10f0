"""When and how the flows run unless told otherwise: the deployments of prefect.yaml.

`prefect deploy` reads prefect.yaml and cannot import Python, so the deployments'
schedules, concurrency limits and parameters are written there, once. `anomdet serve`
(flows/serve.py) serves the same flows on the same terms, and the defaults of its options
are the same schedules: both read them here. The file is also part of this package
(flows/prefect.yaml links to it), so an installed `anomdet` finds it outside the checkout.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import yaml

#: The flows that `anomdet serve` serves, as prefect.yaml's entrypoints name them.
RETRAIN_ENTRYPOINT = "flows/retrain.py:retrain"
SCORE_ENTRYPOINT = "flows/score.py:score"
CHECK_ENTRYPOINT = "flows/check.py:check"


@dataclass(frozen=True)
class Declared:
    """One deployment of prefect.yaml, as far as serving its flow elsewhere needs."""

    name: str
    description: str
    tags: tuple[str, ...]
    parameters: dict[str, Any]
    enforce_parameter_schema: bool
    cron: str
    timezone: str
    #: At most this many runs at once, and what a run beyond it does; None: no limit.
    concurrency_limit: int | None
    collision_strategy: str | None


def _declared(entry: dict[str, Any]) -> Declared:
    where = f"prefect.yaml, deployment {entry.get('name')!r}"
    schedules = entry.get("schedules") or []
    if len(schedules) != 1 or "cron" not in schedules[0]:
        # `anomdet serve` replaces it with the one cron expression of its option.
        raise ValueError(f"{where}: give it exactly one cron schedule")
    limit = entry.get("concurrency_limit")
    if not isinstance(limit, dict):
        limit = {"limit": limit}
    return Declared(
        name=entry["name"], description=entry.get("description") or "",
        tags=tuple(entry.get("tags") or ()), parameters=dict(entry.get("parameters") or {}),
        enforce_parameter_schema=bool(entry.get("enforce_parameter_schema", True)),
        cron=schedules[0]["cron"], timezone=schedules[0].get("timezone") or "UTC",
        concurrency_limit=limit.get("limit"),
        collision_strategy=limit.get("collision_strategy"))


@cache
def declared_deployments() -> dict[str, Declared]:
    """prefect.yaml's deployments by entrypoint."""
    return parse_deployments((files("flows") / "prefect.yaml").read_text())


def parse_deployments(text: str) -> dict[str, Declared]:
    """The deployments of a prefect.yaml by entrypoint; ValueError when one flow has
    several, since then none of them is the one that `anomdet serve` mirrors."""
    config = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    found: dict[str, Declared] = {}
    for entry in config.get("deployments") or []:
        entrypoint = entry.get("entrypoint")
        if entrypoint in found:
            raise ValueError(f"prefect.yaml declares {entrypoint} twice, as "
                             f"{found[entrypoint].name!r} and {entry.get('name')!r}")
        found[entrypoint] = _declared(entry)
    return found


def declared(entrypoint: str) -> Declared:
    """The deployment of prefect.yaml that runs `entrypoint`."""
    try:
        return declared_deployments()[entrypoint]
    except KeyError:
        raise ValueError(f"prefect.yaml declares no deployment of {entrypoint}") from None


def _one_timezone() -> str:
    zones = {declared(e).timezone for e in (RETRAIN_ENTRYPOINT, SCORE_ENTRYPOINT,
                                            CHECK_ENTRYPOINT)}
    if len(zones) != 1:
        raise ValueError(f"prefect.yaml's schedules read their cron in {sorted(zones)}: "
                         "`anomdet serve` takes one time zone for all of them")
    return zones.pop()


#: When the retraining, the scoring of new records and the check for new labels run,
#: as cron expressions...
RETRAIN_CRON = declared(RETRAIN_ENTRYPOINT).cron
SCORE_CRON = declared(SCORE_ENTRYPOINT).cron
CHECK_CRON = declared(CHECK_ENTRYPOINT).cron
#: ... read in this IANA time zone.
TIMEZONE = _one_timezone()
