"""deployments/prefect.yaml: every entrypoint loads, parameters fit the flow, schedules parse."""

from __future__ import annotations

import yaml
from conftest import REPO
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint


def test_deployments_point_at_real_flows_with_valid_parameters(monkeypatch):
    monkeypatch.chdir(REPO)
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert {"corpus", "corpus-refresh-nightly"} <= names
    for dep in spec["deployments"]:
        flow = load_flow_from_entrypoint(dep["entrypoint"], use_placeholder_flow=False)
        flow.validate_parameters(dep.get("parameters", {}))  # raises on a wrong name or type
        assert dep["work_pool"]["name"]
    nightly = next(d for d in spec["deployments"] if d["name"] == "corpus-refresh-nightly")
    assert nightly["entrypoint"].endswith(":corpus_refresh")
    schedule = CronSchedule(**{k: v for k, v in nightly["schedules"][0].items() if k != "active"})
    assert schedule.cron == "0 3 * * *"
