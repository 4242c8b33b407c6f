"""values.schema.json refuses wrong values; the chart refuses combinations a schema cannot express."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import CHART, render


def refused_by_schema(values: dict) -> str:
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError) as exc:
        render(values)
    return str(exc.value)


def refused_by_template(values: dict) -> str:
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError) as exc:
        render(values)
    return str(exc.value)


BAD_VALUES = [
    ("unknown top-level key", {"replicas": 2}, "replicas"),
    ("unknown nested key", {"image": {"repo": "x"}}, "repo"),
    ("replicaCount is a string", {"replicaCount": "2"}, "replicaCount"),
    ("replicaCount 0", {"replicaCount": 0}, "replicaCount"),
    ("pullPolicy not in enum", {"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ("bad digest", {"image": {"digest": "latest"}}, "digest"),
    ("database type unknown", {"database": {"type": "mysql"}}, "type"),
    ("sqlite file outside /data", {"database": {"sqlite": {"path": "/var/lib/ag.db"}}}, "path"),
    ("migration mode unknown", {"database": {"migration": {"mode": "manual"}}}, "mode"),
    ("service type unknown", {"service": {"type": "Ingress"}}, "type"),
    ("service port too large", {"service": {"port": 70000}}, "port"),
    ("privileged container port", {"containerPort": 80}, "containerPort"),
    ("failure rate above 1", {"config": {"simFailureRate": "1.5"}}, "simFailureRate"),
    ("bad duration range", {"config": {"simDurationMs": "fast"}}, "simDurationMs"),
    ("scrape interval not a duration", {"serviceMonitor": {"interval": "thirty"}}, "interval"),
    ("alert for not a duration", {"prometheusRule": {"alerts": {"AutomationGatewayQueueDepthHigh": {"for": "10 minutes"}}}}, "for"),
    ("severity not in enum", {"prometheusRule": {"alerts": {"AutomationGatewayDown": {"severity": "page"}}}}, "severity"),
    ("success threshold above 1", {"prometheusRule": {"alerts": {"AutomationGatewayJobSuccessRateLow": {"threshold": 90}}}}, "threshold"),
    ("queue threshold not an integer", {"prometheusRule": {"alerts": {"AutomationGatewayQueueDepthHigh": {"threshold": "many"}}}}, "threshold"),
    ("unknown alert name", {"prometheusRule": {"alerts": {"AutomationGatewaySomething": {"enabled": True}}}}, "AutomationGatewaySomething"),
    ("runbook url with fragment", {"prometheusRule": {"runbookBaseUrl": "https://x.example.com/r#a"}}, "runbookBaseUrl"),
    ("dashboard label value not a string", {"grafanaDashboard": {"labelValue": 1}}, "labelValue"),
    ("slack secret name invalid", {"alertmanagerConfig": {"slack": {"existingSecret": "Not_A_Name"}}}, "existingSecret"),
    ("hpa utilisation above 100", {"autoscaling": {"targetCPUUtilizationPercentage": 150}}, "targetCPUUtilizationPercentage"),
    ("pdb maxUnavailable 0", {"podDisruptionBudget": {"maxUnavailable": 0}}, "maxUnavailable"),
]


@pytest.mark.parametrize("label,values,field", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_schema_refuses_wrong_values(label, values, field):
    msg = refused_by_schema(values)
    assert field in msg, msg


def test_schema_is_closed_everywhere():
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                if path != "prometheusRule.extraGroups[]":
                    open_objects.append(path)
            for k, v in (node.get("properties") or {}).items():
                walk(v, f"{path}.{k}" if path else k)
            if isinstance(node.get("additionalProperties"), dict):  # e.g. each action of `actions`
                walk(node["additionalProperties"], path + ".*")
            if "items" in node:
                walk(node["items"], path + "[]")

    walk(schema, "")
    assert not open_objects, open_objects
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"])


def test_defaults_pass_the_schema():
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(chart.values)


@pytest.mark.parametrize("replicas", [2, 5])
def test_sqlite_refuses_more_than_one_replica(replicas):
    msg = refused_by_template({"replicaCount": replicas})
    assert "database.type=sqlite supports exactly one replica" in msg
    assert "postgres" in msg


def test_sqlite_refuses_autoscaling():
    msg = refused_by_template({"autoscaling": {"enabled": True}})
    assert "sqlite supports exactly one replica" in msg and "autoscaling" in msg


def test_postgres_needs_an_existing_secret():
    msg = refused_by_template({"database": {"type": "postgres"}, "replicaCount": 2})
    assert "database.postgres.existingSecret" in msg


def test_postgres_allows_many_replicas():
    out = render({"database": {"type": "postgres", "postgres": {"existingSecret": "db"}}, "replicaCount": 4})
    assert "replicas: 4" in next(v for k, v in out.items() if k.endswith("deployment.yaml"))


def test_alertmanager_config_needs_the_slack_secret():
    msg = refused_by_template({"alertmanagerConfig": {"enabled": True}})
    assert "alertmanagerConfig.slack.existingSecret" in msg


def test_termination_grace_must_exceed_the_drain():
    msg = refused_by_template({"terminationGracePeriodSeconds": 30})
    assert "terminationGracePeriodSeconds" in msg and "shutdownGraceSecs" in msg


def test_hpa_min_above_max_is_refused():
    msg = refused_by_template({"database": {"type": "postgres", "postgres": {"existingSecret": "db"}},
                               "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}})
    assert "minReplicas" in msg
