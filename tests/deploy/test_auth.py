"""Chart: API authentication is on by default (tokens file from an existing Secret, mounted
read-only, GATEWAY_AUTH_TOKENS_FILE pointing at it), can be switched off, and /metrics can require a
token (GATEWAY_METRICS_REQUIRE_TOKEN plus the ServiceMonitor's bearer credentials)."""
from __future__ import annotations

import pytest

from conftest import by_kind, objects, one, render


def _main_container(values: dict) -> tuple[dict, dict]:
    docs = objects(render(values))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container["env"]}


def test_auth_is_on_by_default_with_the_tokens_secret_mounted_read_only():
    pod, main = _main_container({})
    env = _env(main)
    assert env["GATEWAY_AUTH_TOKENS_FILE"]["value"] == "/etc/automation-gateway/tokens/tokens.yaml"
    assert "GATEWAY_METRICS_REQUIRE_TOKEN" not in env
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    assert mounts["auth-tokens"]["mountPath"] == "/etc/automation-gateway/tokens"
    assert mounts["auth-tokens"]["readOnly"] is True
    vols = {v["name"]: v for v in pod["volumes"]}
    secret = vols["auth-tokens"]["secret"]
    assert secret["secretName"] == "automation-gateway-generated-tokens"
    assert secret["items"] == [{"key": "tokens.yaml", "path": "tokens.yaml"}]
    assert secret["defaultMode"] & 0o007 == 0, "the tokens file must not be world-readable"


def test_auth_can_be_switched_off():
    pod, main = _main_container({"auth": {"enabled": False}})
    env = _env(main)
    assert "GATEWAY_AUTH_TOKENS_FILE" not in env and "GATEWAY_METRICS_REQUIRE_TOKEN" not in env
    assert all(m["name"] != "auth-tokens" for m in main.get("volumeMounts", []))
    assert all(v["name"] != "auth-tokens" for v in pod.get("volumes", []))


def test_custom_secret_key_and_mount_path():
    pod, main = _main_container({"auth": {"existingSecret": "my-tokens", "secretKey": "api.yaml", "mountPath": "/run/tokens/"}})
    assert _env(main)["GATEWAY_AUTH_TOKENS_FILE"]["value"] == "/run/tokens/api.yaml"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["auth-tokens"]["secret"]["secretName"] == "my-tokens"


def test_the_migration_step_gets_no_tokens_volume():
    docs = objects(render({"database": {"type": "postgres", "postgres": {"existingSecret": "db"}}, "replicaCount": 2}))
    job = one(docs, "Job")
    assert not any(v["name"] == "auth-tokens" for v in job["spec"]["template"]["spec"].get("volumes", []))


def test_auth_enabled_without_a_secret_name_generates_the_tokens_secret():
    # Before, this was refused; now the chart creates the Secret once (tests/deploy/test_chart_traps.py).
    docs = objects(render({"auth": {"enabled": True, "existingSecret": ""}}))
    secret = one(docs, "Secret")
    vols = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert vols["auth-tokens"]["secret"]["secretName"] == secret["metadata"]["name"]


@pytest.mark.parametrize(
    "values,field",
    [
        ({"auth": {"enabled": "yes"}}, "enabled"),
        ({"auth": {"token": "agw_x"}}, "token"),
        ({"auth": {"existingSecret": "Not_A_Name"}}, "existingSecret"),
        ({"metrics": {"requireToken": "true"}}, "requireToken"),
        ({"metrics": {"path": "/m"}}, "path"),
        ({"metrics": {"scrapeToken": {"existingSecret": "x", "token": "agw_x"}}}, "token"),
    ],
    ids=["enabled-not-bool", "no-inline-token", "bad-secret-name", "requireToken-not-bool", "unknown-metrics-key", "no-inline-scrape-token"],
)
def test_schema_refuses_wrong_auth_values(values, field):
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError) as exc:
        render(values)
    assert field in str(exc.value)


def test_metrics_require_token_sets_the_env_and_the_scrape_credentials():
    docs = objects(render({"metrics": {"requireToken": True, "scrapeToken": {"existingSecret": "ag-scrape", "secretKey": "token"}}}))
    main = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert _env(main)["GATEWAY_METRICS_REQUIRE_TOKEN"]["value"] == "true"
    ep = one(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert ep["authorization"] == {"type": "Bearer", "credentials": {"name": "ag-scrape", "key": "token"}}


def test_metrics_open_by_default_means_no_scrape_credentials():
    docs = objects(render({}))
    assert all("authorization" not in ep for sm in by_kind(docs, "ServiceMonitor") for ep in sm["spec"]["endpoints"])


def test_metrics_require_token_is_refused_without_what_it_needs():
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError) as exc:
        render({"metrics": {"requireToken": True}})
    assert "metrics.scrapeToken.existingSecret" in str(exc.value)
    with pytest.raises(helm.HelmRenderError) as exc:
        render({"auth": {"enabled": False}, "metrics": {"requireToken": True}, "serviceMonitor": {"enabled": False},
                "prometheusRule": {"enabled": False}})
    assert "auth.enabled" in str(exc.value)
    # Without a ServiceMonitor (and so without the rules, which need it) no scrape Secret is needed.
    render({"metrics": {"requireToken": True}, "serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}})
