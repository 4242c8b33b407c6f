"""The local stack (compose.yaml and deploy/compose/), checked without a container engine: the Compose
Specification JSON schema, every mounted file, promtool and amtool on the configurations the
containers would load, the Grafana provisioning, Loki and Tempo configurations, and that the
services' addresses, ports and labels line up with each other and with the repository's rules."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import REPO, need_tool

COMPOSE = REPO / "compose.yaml"
ENV_EXAMPLE = REPO / "compose.env.example"
NPM_DIR = Path(os.environ.get("AG_COMPOSE_NPM_DIR", Path.home() / ".cache" / "automation-gateway-compose-npm"))
# The Compose Specification schema as the dclint package ships it (tests/deploy/run.sh installs it).
SCHEMA = Path(os.environ.get("AG_COMPOSE_SCHEMA", NPM_DIR / "node_modules" / "dclint" / "schemas" / "compose.schema.json"))
EXPECTED = {"gateway", "postgres", "prometheus", "alertmanager", "grafana", "loki", "tempo"}
DIGEST = re.compile(r"^[\w.\-/]+:[\w.\-]+@sha256:[0-9a-f]{64}$")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict:
    return compose()["services"][name]


def bind_mounts(svc: dict) -> list[tuple[str, str]]:
    """(host path as written, container path) of the service's bind mounts (short syntax)."""
    out = []
    for v in svc.get("volumes", []):
        assert isinstance(v, str), f"use the short volume syntax: {v}"
        src, dst = v.split(":")[:2]
        if src.startswith((".", "/")):
            out.append((src, dst))
    return out


def host_path(svc: dict, container_path: str) -> Path:
    """The repository file a container path comes from, through the service's bind mounts."""
    for src, dst in sorted(bind_mounts(svc), key=lambda m: -len(m[1])):
        if container_path == dst or container_path.startswith(dst.rstrip("/") + "/"):
            return (REPO / src / os.path.relpath(container_path, dst)).resolve()
    pytest.fail(f"{container_path} is not mounted from the repository")


def env(name: str) -> dict[str, str]:
    e = service(name).get("environment", {})
    assert isinstance(e, dict), "use the mapping syntax for environment"
    return {k: str(v) for k, v in e.items()}


def port(url: str) -> int:
    return urlsplit(url).port


def load(path: Path):
    return yaml.safe_load(path.read_text())


def test_compose_file_matches_the_compose_specification_schema():
    from jsonschema import Draft7Validator

    if not SCHEMA.is_file():
        pytest.fail(f"Compose Specification schema missing at {SCHEMA} (tests/deploy/run.sh npm-installs dclint)")
    schema = json.loads(SCHEMA.read_text())
    assert schema.get("title") == "Compose Specification", "not the Compose Specification schema"
    validator = Draft7Validator(schema)
    errors = ["/".join(map(str, e.absolute_path)) + ": " + e.message for e in validator.iter_errors(compose())]
    assert not errors, errors
    # The validator is live: a misspelt key fails it.
    broken = compose()
    broken["services"]["gateway"]["depends_onn"] = broken["services"]["gateway"].pop("depends_on")
    assert list(validator.iter_errors(broken))


def test_the_stack_has_every_service_and_pins_every_image():
    services = compose()["services"]
    assert set(services) == EXPECTED
    assert service("gateway")["build"]["dockerfile"] == "Dockerfile"
    for name, svc in services.items():
        if name == "gateway":
            continue
        image = svc["image"]
        assert DIGEST.match(image), f"{name}: image {image} is not pinned as tag@sha256:digest"
        assert ":latest" not in image


def test_every_mounted_path_exists_in_the_repository():
    doc = compose()
    for name, svc in doc["services"].items():
        for src, dst in bind_mounts(svc):
            p = (REPO / src).resolve()
            assert p.is_relative_to(REPO), f"{name}: {src} points outside the repository"
            assert p.exists(), f"{name}: mounted {src} does not exist"
            assert dst.startswith("/"), f"{name}: container path {dst} is not absolute"
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in doc["volumes"], f"{name}: named volume {src} is not declared"
        for s in svc.get("secrets", []):
            source = s["source"] if isinstance(s, dict) else s
            assert source in doc["secrets"], f"{name}: secret {source} is not declared"
    build = service("gateway")["build"]
    assert (REPO / build["context"] / build["dockerfile"]).is_file()


def test_dependencies_wait_for_health_where_there_is_a_healthcheck():
    services = compose()["services"]
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health, which has no healthcheck"
        hc = svc.get("healthcheck")
        if hc:
            assert hc["test"][0] == "CMD", f"{name}: exec-form healthcheck expected"
    assert services["gateway"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The gateway image has no shell: its healthcheck is the binary's own client, in exec form.
    assert services["gateway"]["healthcheck"]["test"][1] == "/usr/local/bin/automation-gateway"


def test_published_ports_are_loopback_only():
    for name, svc in compose()["services"].items():
        for p in svc.get("ports", []):
            assert str(p).startswith("127.0.0.1:"), f"{name}: {p} would listen on every interface"


def test_every_variable_is_in_the_example_env_file_and_no_secret_is_inline():
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text)) | {
        s["environment"] for s in compose().get("secrets", {}).values() if "environment" in s
    }
    example = ENV_EXAMPLE.read_text()
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", example, re.M))
    assert used <= documented, f"not in compose.env.example: {sorted(used - documented)}"
    assert documented <= used, f"unused in compose.yaml: {sorted(documented - used)}"
    assert "hooks.slack.com/services/T" not in text, "the Slack URL belongs in .env, not in compose.yaml"
    for word in ("PASSWORD:", "PASSWORD="):
        for line in text.splitlines():
            if word in line:
                assert "${" in line, f"inline secret: {line.strip()}"
    assert ".env" in (REPO / ".dockerignore").read_text().split()


def test_gateway_runs_on_postgres_and_sends_logs_to_loki_and_traces_to_tempo():
    e = env("gateway")
    # The password is interpolated from .env: stand a plain word in for it.
    db = urlsplit(re.sub(r"\$\{[^}]*\}", "secret", e["DATABASE_URL"]))
    assert db.scheme == "postgres" and db.hostname == "postgres" and db.port == 5432
    pg = env("postgres")
    assert db.path.lstrip("/") == pg["POSTGRES_DB"] and db.username == pg["POSTGRES_USER"]
    # Logs: pushed (LOKI_URL); no log agent in the stack, so no duplicate lines.
    assert urlsplit(e["LOKI_URL"]).hostname == "loki"
    assert not {"promtail", "alloy", "fluent-bit", "vector"} & set(compose()["services"])
    loki = load(host_path(service("loki"), "/etc/loki/loki.yaml"))
    assert loki["server"]["http_listen_port"] == port(e["LOKI_URL"])
    if loki.get("auth_enabled", True):
        assert e.get("GATEWAY_LOKI_TENANT"), "multi-tenant Loki refuses pushes without a tenant"
    # Traces: OTLP/HTTP to Tempo's receiver.
    otlp = e["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert urlsplit(otlp).hostname == "tempo"
    tempo = load(host_path(service("tempo"), "/etc/tempo/tempo.yaml"))
    receiver = tempo["distributor"]["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert int(receiver.rsplit(":", 1)[1]) == port(otlp)


def test_loki_and_tempo_configurations():
    loki = load(host_path(service("loki"), "/etc/loki/loki.yaml"))
    for key in ("server", "common", "schema_config", "limits_config"):
        assert key in loki, f"loki.yaml lacks {key}"
    cfg = loki["schema_config"]["configs"][-1]
    assert cfg["store"] == "tsdb" and cfg["schema"] == "v13" and cfg["object_store"] == "filesystem"
    assert loki["common"]["path_prefix"] in [v.split(":")[1] for v in service("loki")["volumes"]]
    tempo = load(host_path(service("tempo"), "/etc/tempo/tempo.yaml"))
    for key in ("server", "distributor", "storage"):
        assert key in tempo, f"tempo.yaml lacks {key}"
    assert tempo["storage"]["trace"]["backend"] == "local"


def test_promtool_checks_the_prometheus_configuration_with_the_mounted_rules(tmp_path: Path):
    prom = service("prometheus")
    conf_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    conf = load(host_path(prom, conf_path))
    # The rule files the container would load, read from the repository through the mounts.
    conf["rule_files"] = [str(host_path(prom, r)) for r in conf["rule_files"]]
    for r in conf["rule_files"]:
        assert Path(r).is_file(), r
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(conf))
    res = subprocess.run([need_tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr

    # The scrape carries the labels the rules select on, at the gateway's port.
    job = next(j for j in conf["scrape_configs"] if j["job_name"] == "automation-gateway")
    sc = job["static_configs"][0]
    assert sc["targets"] == ["gateway:8000"]
    rules = "\n".join(Path(r).read_text() for r in conf["rule_files"])
    assert f'job="{job["job_name"]}", namespace="{sc["labels"]["namespace"]}"' in rules
    am = conf["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["alertmanager:9093"]


def test_amtool_checks_the_alertmanager_configuration_and_the_slack_url_comes_from_the_env_file():
    am = service("alertmanager")
    conf_path = next(a.split("=", 1)[1] for a in am["command"] if a.startswith("--config.file="))
    host_conf = host_path(am, conf_path)
    res = subprocess.run([need_tool("amtool"), "check-config", str(host_conf)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    conf = load(host_conf)
    # Templates resolve relative to the config file inside the container: they must be mounted there.
    for t in conf.get("templates", []):
        assert host_path(am, str(Path(conf_path).parent / t)).is_file(), f"template {t} is not mounted"
    # The Slack receiver's api_url_file is the secret Compose writes from SLACK_WEBHOOK_URL.
    files = [c["api_url_file"] for r in conf["receivers"] for c in r.get("slack_configs", [])]
    assert files, "no Slack receiver"
    targets = {s["target"]: s["source"] for s in am["secrets"]}
    for f in files:
        assert f in targets, f"{f} is not where the secret is mounted"
        assert compose()["secrets"][targets[f]] == {"environment": "SLACK_WEBHOOK_URL"}
    # Alerts from this stack reach the Slack route: its matchers name the scrape's namespace label.
    routes = [r for r in conf["route"]["routes"] if r["receiver"].startswith("slack")]
    assert any('namespace="automation"' in m for r in routes for m in r["matchers"])


def test_grafana_provisions_the_data_sources_and_the_dashboard():
    gf = service("grafana")
    ds_doc = load(host_path(gf, "/etc/grafana/provisioning/datasources/datasources.yaml"))
    assert ds_doc["apiVersion"] == 1
    sources = ds_doc["datasources"]
    for ds in sources:
        for key in ("name", "type", "uid", "url"):
            assert ds.get(key), f"data source {ds.get('name')} lacks {key}"
    uids = [ds["uid"] for ds in sources]
    assert len(set(uids)) == len(uids), "data source uids must be unique"
    by_type = {ds["type"]: ds for ds in sources}
    services = compose()["services"]
    expected = {"prometheus": ("prometheus", 9090), "loki": ("loki", 3100), "tempo": ("tempo", 3200)}
    for kind, (host, p) in expected.items():
        assert kind in by_type, f"no {kind} data source"
        u = urlsplit(by_type[kind]["url"])
        assert u.hostname == host and host in services and u.port == p, by_type[kind]["url"]
    assert sum(1 for ds in sources if ds.get("isDefault")) == 1
    # Cross-links point at provisioned uids.
    for ds in sources:
        jd = ds.get("jsonData", {})
        refs = [f["datasourceUid"] for f in jd.get("derivedFields", [])]
        refs += [jd[k]["datasourceUid"] for k in ("tracesToLogsV2",) if k in jd]
        for ref in refs:
            assert ref in uids, f"{ds['name']} links to unknown uid {ref}"
    # The ports the data sources use are the ones the services listen on.
    tempo = load(host_path(service("tempo"), "/etc/tempo/tempo.yaml"))
    assert tempo["server"]["http_listen_port"] == 3200

    dash_doc = load(host_path(gf, "/etc/grafana/provisioning/dashboards/dashboards.yaml"))
    assert dash_doc["apiVersion"] == 1
    provider = dash_doc["providers"][0]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    src = host_path(gf, path)
    assert src == (REPO / "dashboards").resolve(), f"the provider reads {path}, mounted from {src}, not dashboards/"
    boards = sorted(src.glob("*.json"))
    assert boards, "no dashboard in dashboards/"
    for b in boards:
        board = json.loads(b.read_text())
        assert board.get("uid") and board.get("panels"), f"{b.name} is not a dashboard"
    home = env("grafana").get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert host_path(gf, home).is_file()
    # Admin password from the env file; anonymous visitors may only look.
    assert env("grafana")["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")
    assert env("grafana").get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer") == "Viewer"
