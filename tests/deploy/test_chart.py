"""The Helm chart: rendered by the real Helm v4 engine, linted, and every object schema-validated."""
from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import (
    APPS_VALUES,
    CHART,
    NAMESPACE,
    REPO,
    by_kind,
    crd_errors,
    is_custom,
    k8s_errors,
    need_tool,
    objects,
    one,
    render,
    scenarios,
    strip_meta,
)

SCENARIOS = scenarios()
IDS = [s[0] for s in SCENARIOS]
# Gateway API objects: neither built-in nor in the CRD folder; test_chart_traps.py validates them
# with the @kubernetes-models/gateway-api model.
GATEWAY_API = {("gateway.networking.k8s.io/v1", "HTTPRoute")}


def is_gateway_api(doc: dict) -> bool:
    return (doc["apiVersion"], doc["kind"]) in GATEWAY_API


@pytest.fixture(scope="module")
def rendered():
    return {sid: render(values) for sid, values in SCENARIOS}


def test_there_are_environment_values_files_and_a_full_scenario():
    assert APPS_VALUES, "apps/automation-gateway/ has no values*.yaml"
    assert "ci/full-values.yaml" in IDS


@pytest.mark.parametrize("sid,values", SCENARIOS, ids=IDS)
def test_helm_lint_reports_no_errors(sid, values):
    import helm_python as helm

    res = helm.lint(str(CHART), values, strict=True, kube_version="v1.30.0")
    errors = [m for m in res["messages"] if m["severity"] >= 3] + list(res.get("errors") or [])
    assert not errors, errors
    assert res["total_charts_linted"] == 1


@pytest.mark.parametrize("sid", IDS)
def test_every_builtin_object_passes_strict_kubernetes_1_30_validation(rendered, sid):
    docs = objects(rendered[sid])
    builtins = [d for d in docs if not is_custom(d) and not is_gateway_api(d)]
    assert builtins
    problems = {f"{d['kind']}/{d['metadata']['name']}": k8s_errors(d) for d in builtins}
    assert not {k: v for k, v in problems.items() if v}, problems


@pytest.mark.parametrize("sid", IDS)
def test_kubernetes_validate_cli_strict_passes_on_rendered_files(rendered, sid):
    exe = need_tool("kubernetes-validate")
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, d in enumerate(objects(rendered[sid])):
            if is_custom(d) or is_gateway_api(d):
                continue
            p = Path(tmp) / f"{i:02d}-{d['kind'].lower()}.yaml"
            p.write_text(yaml.safe_dump(strip_meta(d)))
            files.append(str(p))
        res = subprocess.run([exe, "-k", "1.30", "--strict", *files], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("sid", IDS)
def test_every_custom_resource_passes_its_crd_schema(rendered, sid):
    customs = [d for d in objects(rendered[sid]) if is_custom(d)]
    problems = {f"{d['kind']}/{d['metadata']['name']}": crd_errors(d) for d in customs}
    assert not {k: v for k, v in problems.items() if v}, problems


@pytest.mark.parametrize("sid", IDS)
def test_every_object_sets_the_release_namespace_and_common_labels(rendered, sid):
    values = dict(SCENARIOS)[sid]
    rbac_namespaces = ((values.get("kubernetesRunner") or {}).get("rbac") or {}).get("namespaces") or []
    for d in objects(rendered[sid]):
        md = d["metadata"]
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            assert "namespace" not in md, f"{d['kind']}/{md['name']} is cluster-scoped"
        elif d["kind"] in ("Role", "RoleBinding"):
            # The kubernetes runner's rights live in the namespaces of the workloads it restarts.
            assert md.get("namespace") in rbac_namespaces, f"{d['kind']}/{md['name']} in {md.get('namespace')}"
        else:
            expected_ns = NAMESPACE
            if d["__template__"].endswith("dashboards.yaml") and (values.get("grafanaDashboard") or {}).get("namespace"):
                expected_ns = values["grafanaDashboard"]["namespace"]
            assert md.get("namespace") == expected_ns, f"{d['kind']}/{md['name']} has no namespace"
        labels = md.get("labels") or {}
        assert labels.get("app.kubernetes.io/instance") == "automation-gateway", md["name"]
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", md["name"]


@pytest.mark.parametrize("sid", IDS)
def test_workload_is_hardened_and_probed(rendered, sid):
    docs = objects(rendered[sid])
    dep = one(docs, "Deployment")
    spec = dep["spec"]
    assert set(spec["selector"]["matchLabels"]) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"}
    pod = spec["template"]["spec"]
    values = dict(SCENARIOS)[sid]
    rbac = (values.get("kubernetesRunner") or {}).get("rbac") or {}
    # The API token is mounted only for the kubernetes runner's RBAC.
    assert pod["automountServiceAccountToken"] is bool(rbac.get("namespaces") or rbac.get("clusterWide"))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    grace = pod["terminationGracePeriodSeconds"]
    containers = pod["containers"] + pod.get("initContainers", [])
    for c in containers:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["runAsNonRoot"] is True
        assert c["resources"]["requests"] and c["resources"]["limits"]
    main = pod["containers"][0]
    assert main["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    env = {e["name"]: e for e in main["env"]}
    assert int(env["GATEWAY_SHUTDOWN_GRACE_SECS"]["value"]) < grace
    assert env["GATEWAY_LISTEN"]["value"] == "0.0.0.0:8000"
    # Secrets only by reference: DATABASE_URL is either a SQLite path or a secretKeyRef.
    db = env["DATABASE_URL"]
    if "value" in db:
        assert db["value"].startswith("sqlite:///data/")
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        assert mounts.get("/data") == "data"
        assert spec["strategy"]["type"] == "Recreate"
        assert spec.get("replicas", 1) == 1
    else:
        assert set(db["valueFrom"]) == {"secretKeyRef"}
    for e in main["env"]:
        assert "postgres://" not in str(e.get("value", "")), "a PostgreSQL URL was inlined"
    # The only Secret the chart creates is the generate-once tokens Secret (auth on, no existingSecret).
    auth = {"enabled": True, "existingSecret": "", **(values.get("auth") or {})}
    expected = ["automation-gateway-generated-tokens"] if auth["enabled"] and not auth["existingSecret"] else []
    assert [s["metadata"]["name"] for s in by_kind(docs, "Secret")] == expected


@pytest.mark.parametrize("sid", IDS)
def test_service_has_named_http_port_selecting_the_pods(rendered, sid):
    docs = objects(rendered[sid])
    svc = one(docs, "Service")
    dep = one(docs, "Deployment")
    assert svc["spec"]["ports"][0]["name"] == "http"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["metadata"]["name"] == dep["metadata"]["name"], "rules and dashboards assume job == Deployment name"


@pytest.mark.parametrize("sid", IDS)
def test_hpa_pdb_and_replicas_are_consistent(rendered, sid):
    values = dict(SCENARIOS)[sid]
    docs = objects(rendered[sid])
    dep = one(docs, "Deployment")
    hpa_on = (values.get("autoscaling") or {}).get("enabled", False)
    replicas = values.get("replicaCount", 1)
    if hpa_on:
        assert "replicas" not in dep["spec"], "HPA on: the Deployment must not set replicas"
        hpa = one(docs, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    else:
        assert dep["spec"]["replicas"] == replicas
        assert not by_kind(docs, "HorizontalPodAutoscaler")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    if hpa_on or replicas > 1:
        assert len(pdbs) == 1 and pdbs[0]["spec"]["maxUnavailable"] == 1
        assert "minAvailable" not in pdbs[0]["spec"]
    else:
        assert not pdbs, "a PDB on a single replica blocks node drains"


@pytest.mark.parametrize("sid", IDS)
def test_monitoring_objects_carry_discovery_labels(rendered, sid):
    docs = objects(rendered[sid])
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"][0]["port"] == "http"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    pr = one(docs, "PrometheusRule")
    assert pr["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    cms = [d for d in by_kind(docs, "ConfigMap") if d["__template__"].endswith("dashboards.yaml")]
    assert cms, "no dashboard ConfigMap"
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        for key, body in cm["data"].items():
            assert key.endswith(".json")
            assert (REPO / "dashboards" / key).read_text().rstrip("\n") == body, "dashboard ConfigMap differs from dashboards/"


def test_prometheus_rule_rendered_with_defaults_equals_rules_source(rendered):
    pr = one(objects(rendered["defaults"]), "PrometheusRule")
    source = yaml.safe_load((REPO / "rules" / "automation-gateway.rules.yml").read_text())
    assert pr["spec"]["groups"] == source["groups"]


def test_prometheus_rule_follows_release_name_namespace_and_thresholds():
    values = {
        "prometheusRule": {
            "runbookBaseUrl": "https://wiki.example.com/ag",
            "alerts": {
                "AutomationGatewayQueueDepthHigh": {"enabled": True, "for": "20m", "severity": "critical", "threshold": 250},
                "AutomationGatewayJobSuccessRateLow": {"enabled": True, "for": "10m", "severity": "critical", "threshold": 0.95},
                "AutomationGatewayJobsStuck": {"enabled": False, "for": "5m", "severity": "critical"},
                "AutomationGatewayJobLatencyHigh": {"enabled": True, "for": "10m", "severity": "warning", "threshold": 120},
                "AutomationGatewayDown": {"enabled": True, "for": "5m", "severity": "critical"},
            },
        }
    }
    pr = one(objects(render(values, name="ag", namespace="ops")), "PrometheusRule")
    rules = {r["alert"]: r for g in pr["spec"]["groups"] for r in g["rules"]}
    assert "AutomationGatewayJobsStuck" not in rules
    q = rules["AutomationGatewayQueueDepthHigh"]
    assert q["for"] == "20m" and q["labels"]["severity"] == "critical"
    assert q["expr"].rstrip().endswith("> 250")
    assert "(threshold: 250)" in q["annotations"]["description"]
    assert rules["AutomationGatewayJobSuccessRateLow"]["expr"].rstrip().endswith("< 0.95")
    assert rules["AutomationGatewayJobLatencyHigh"]["expr"].rstrip().endswith("> 120")
    for r in rules.values():
        assert 'job="ag-automation-gateway", namespace="ops"' in r["expr"], r["expr"]
        assert 'namespace="automation"' not in r["expr"]
        assert r["annotations"]["runbook_url"] == "https://wiki.example.com/ag#" + r["alert"].lower()
    down = rules["AutomationGatewayDown"]
    assert down["labels"]["namespace"] == "ops" and down["labels"]["job"] == "ag-automation-gateway"
    assert "job ag-automation-gateway in namespace ops" in down["annotations"]["description"]


def test_optional_pieces_are_switched_by_values_only():
    docs = objects(render({"serviceMonitor": {"enabled": False, "interval": "30s"},
                           "prometheusRule": {"enabled": False, "runbookBaseUrl": "https://x.example.com/r", "alerts": yaml.safe_load((CHART / "values.yaml").read_text())["prometheusRule"]["alerts"]},
                           "grafanaDashboard": {"enabled": False, "labelKey": "grafana_dashboard", "labelValue": "1"},
                           "tests": {"enabled": False, "image": {"repository": "busybox", "tag": "1", "digest": "", "pullPolicy": "IfNotPresent"}}}))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "PersistentVolumeClaim", "Secret", "Service", "ServiceAccount"]
    templates = "".join(p.read_text() for p in (CHART / "templates").rglob("*") if p.is_file())
    assert ".Capabilities.APIVersions" not in templates


def test_full_scenario_renders_every_optional_object(rendered):
    docs = objects(rendered["ci/full-values.yaml"])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceAccount", "ServiceMonitor", "PrometheusRule", "ConfigMap",
            "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "AlertmanagerConfig", "Job", "Pod"} <= kinds
    job = one(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    amc = one(docs, "AlertmanagerConfig")
    slack = amc["spec"]["receivers"][0]["slackConfigs"][0]
    assert slack["apiURL"] == {"name": "automation-gateway-slack", "key": "webhook-url"}
    dep = one(docs, "Deployment")
    main = dep["spec"]["template"]["spec"]["containers"][0]
    assert main["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    env = {e["name"]: e for e in main["env"]}
    assert env["GATEWAY_AUTH_TOKENS_FILE"]["value"] == "/etc/automation-gateway/tokens/tokens.yaml"
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert mounts["/etc/automation-gateway/tokens"]["readOnly"] is True
    nps = {d["metadata"]["name"]: d for d in by_kind(docs, "NetworkPolicy")}
    assert set(nps) == {"automation-gateway", "automation-gateway-migrate"}
    assert "Egress" in nps["automation-gateway"]["spec"]["policyTypes"]
    test_pod_labels = one(docs, "Pod")["metadata"]["labels"]
    peers = [p for rule in nps["automation-gateway"]["spec"]["ingress"] for p in rule["from"]]
    assert any("podSelector" in p and p["podSelector"]["matchLabels"].items() <= test_pod_labels.items() for p in peers), \
        "the helm test pod must be allowed in"
    job_pod_labels = job["spec"]["template"]["metadata"]["labels"]
    migrate_selector = nps["automation-gateway-migrate"]["spec"]["podSelector"]["matchLabels"]
    assert migrate_selector.items() <= job_pod_labels.items(), "the migration pods must be covered by a NetworkPolicy"
    svc_selector = one(docs, "Service")["spec"]["selector"]
    assert not svc_selector.items() <= job_pod_labels.items(), "the Service must not select migration pods"


def test_postgres_initcontainer_mode_runs_migrate_before_serve():
    values = yaml.safe_load((CHART / "ci" / "postgres-initcontainer-values.yaml").read_text())
    docs = objects(render(values))
    assert not by_kind(docs, "Job")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["args"] == ["migrate"]
    assert pod["containers"][0]["args"] == ["serve"]
    assert pod["serviceAccountName"] == "default"


def test_notes_and_helm_test_pod_are_rendered():
    out = render({})
    notes = next(v for k, v in out.items() if k.endswith("NOTES.txt"))
    assert "port-forward svc/automation-gateway" in notes
    pod = one(objects(out), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["containers"][0]["args"][-1] == "http://automation-gateway.automation.svc:8000/healthz"


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["kubeVersion"]
    cargo = (REPO / "Cargo.toml")
    if cargo.exists():
        m = re.search(r'^\[package\][^\[]*?^version\s*=\s*"([^"]+)"', cargo.read_text(), re.M | re.S)
        assert m, "no [package] version in Cargo.toml"
        assert chart["appVersion"] == m.group(1), "Chart.yaml appVersion must equal the crate version"


def test_every_value_is_documented_in_values_yaml():
    """Each key, or one of its parent keys, has a comment line directly above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = i > 0 and lines[i - 1].strip().startswith("#")
        inherited = any(d for _, d in stack)
        assert documented or inherited, f"undocumented value on line {i + 1}: {line.strip()}"
        stack.append((indent, documented or inherited))
